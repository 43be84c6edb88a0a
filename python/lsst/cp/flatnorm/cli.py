# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The ``cp-flatnorm`` command.

- ``cp-flatnorm camera import SOURCE -o camera.json`` writes the camera of an obs_base camera YAML
  file, an afw camera or any other camera source (`lsst.cp.flatnorm.camera_source`) as CameraModel
  JSON;
- ``cp-flatnorm register REPO --instrument-config FILE`` creates the repository if needed, with
  the package's seed config, registers the `~lsst.cp.flatnorm.instrument.FlatInstrument` that
  ``FILE`` configures and certifies its camera;
- ``cp-flatnorm ingest REPO --instrument NAME FILES...`` ingests post-ISR flat FITS files
  (`lsst.cp.flatnorm.flat_ingest.ingest_flats`);
- ``cp-flatnorm check REPO [--remove-orphans]`` checks that every registered dataset has its file
  and every file its dataset, after a run that failed (`lsst.cp.flatnorm.repo_check`).
- ``cp-flatnorm verify REPO --collections C...`` prints the verdicts of the flat verifications in
  the collections (`lsst.cp.flatnorm.verify_summary`), with status 3 if one failed.
- ``cp-flatnorm report REPO --collections ... -o DIR`` writes the browsable HTML report of a flat
  run (`lsst.cp.flatnorm.report_command`).

A bad input ends the command with status 1 and the error's message, without a traceback.

Each subcommand is one ``_add_<name>(subparsers)`` function, listed in `_SUBCOMMANDS`, that adds its
parser and sets ``handler`` to the function running it (which returns the exit status); a command with
subcommands of its own (``camera import``) adds a parser with its own subparsers the same way.
"""

from __future__ import annotations

__all__ = ["build_parser", "main"]

import argparse
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

# Only the standard library (and report_command's parser, which imports nothing more) at the top:
# `cp-flatnorm --help` must answer at once, so the middleware, astropy and pydantic are imported by the
# handlers that need them.
from .report_command import add_report_parser

if TYPE_CHECKING:
    from lsst.daf.butler import Butler

    from .flat_ingest import IngestResult
    from .header_keywords import HeaderKeywords

_PROG = "cp-flatnorm"


class CommandError(Exception):
    """A bad argument found after parsing (an unreadable file, an unknown field...)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cp-flatnorm`` command.

    Parameters
    ----------
    argv : `~collections.abc.Sequence` [`str`], optional
        Arguments, without the program name; ``sys.argv[1:]`` if `None`.

    Returns
    -------
    status : `int`
        0 on success, 1 if the input was refused (the message is on standard error), 2 for a
        usage error (argparse's convention).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _show_progress_and_warnings()
    try:
        return args.handler(args)
    except (CommandError, ValueError, LookupError, OSError, ImportError) as error:
        print(f"{_PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


class _StandardErrorHandler(logging.StreamHandler):
    """Log lines to whatever ``sys.stderr`` is when they are written (a caller may replace it)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(f"{_PROG}: %(levelname)s: %(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def _show_progress_and_warnings() -> None:
    """Send the package's INFO log lines (progress) and warnings to standard error, once."""
    log = logging.getLogger("lsst.cp.flatnorm")
    if not any(isinstance(handler, _StandardErrorHandler) for handler in log.handlers):
        log.addHandler(_StandardErrorHandler())
    log.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``cp-flatnorm`` and its subcommands."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Flat-field normalization tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                       parser_class=_EpilogOnDemandParser)
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _add_camera(subparsers: Any) -> None:
    parser = subparsers.add_parser("camera", help="camera descriptions",
                                   description="Work with camera descriptions.")
    commands = parser.add_subparsers(dest="camera_command", required=True, metavar="COMMAND")
    imports = commands.add_parser(
        "import",
        help="write a camera as CameraModel JSON",
        description="Read a camera and write it as CameraModel JSON, the form instrument configs and "
                    "repositories keep. SOURCE is an obs_base camera YAML file (.yaml/.yml, as obs_lsst "
                    "generates), CameraModel JSON (.json, checked and rewritten), python:module.function "
                    "(returning a CameraModel or an afw Camera) or instrument:module.Class (an "
                    "Instrument whose getCamera() gives the camera, e.g. instrument:lsst.obs.lsst.LsstCam "
                    "where the full stack is set up).",
    )
    imports.add_argument("source", help="camera source")
    imports.add_argument("-o", "--output", required=True, help="JSON file to write")
    imports.set_defaults(handler=_run_camera_import)


def _run_camera_import(args: argparse.Namespace) -> int:
    from .camera_source import load_camera

    try:
        camera = load_camera(args.source)
    except TypeError as error:  # a python: or instrument: source that gave no camera
        raise CommandError(str(error)) from None
    with open(args.output, "w") as stream:
        stream.write(camera.model_dump_json(indent=1))
    n_amplifiers = sum(len(detector) for detector in camera)
    types = sorted({detector.type for detector in camera})
    print(f"Camera {camera.getName()}: {_count(len(camera), 'detector')} ({', '.join(types)}), "
          f"{_count(n_amplifiers, 'amplifier')}, written to {args.output}.")
    return 0


def _add_register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "register",
        help="register an instrument and certify its camera",
        description="Create the repository (with the package's seed config) if REPO has none, register "
                    "the instrument, detector and physical_filter records of the FlatInstrument that the "
                    "config file describes, and certify its camera in <instrument>/calib. Running it "
                    "again with the same config changes nothing.",
    )
    parser.add_argument("repo", help="butler repository (created if it does not exist)")
    parser.add_argument("--instrument-config", required=True, metavar="FILE",
                        help="FlatInstrument YAML file: name, camera, filters")
    parser.add_argument("--update", action="store_true",
                        help="replace records and the certified camera that differ from the config's")
    parser.set_defaults(handler=_run_register)


def _run_register(args: argparse.Namespace) -> int:
    from .butler_setup import no_new_empty_directories
    from .instrument import FlatInstrument

    instrument = FlatInstrument.from_config(args.instrument_config)
    camera = instrument.getCamera()  # its problems before anything is created
    with _removed_if_failed(args.repo):
        butler, created = _open_or_create(args.repo)
        with no_new_empty_directories(butler):
            camera_changed = instrument.register_with_camera(butler, update=args.update)
    print(f"{'Created' if created else 'Opened'} repository {args.repo}; registered {instrument.getName()} "
          f"({_count(len(camera), 'detector')}, filters {', '.join(instrument.config.filters)}); camera "
          f"{'certified' if camera_changed else 'already certified, unchanged'} in "
          f"{instrument.makeCalibrationCollectionName()}.")
    return 0


@contextlib.contextmanager
def _removed_if_failed(directory: str) -> Iterator[None]:
    """Remove, if the block raises, the repository it created in ``directory``: the directory itself
    if it did not exist, else the entries it did not have.  An existing repository is left to the
    butler's rollback (its database may still be open)."""
    before = set(os.listdir(directory)) if os.path.isdir(directory) else None
    try:
        yield
    except BaseException:
        if before is None:
            shutil.rmtree(directory, ignore_errors=True)
        elif "butler.yaml" not in before:
            for entry in set(os.listdir(directory)) - before:
                path = os.path.join(directory, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)
        raise


def _open_or_create(repo: str) -> tuple[Butler, bool]:
    """A writeable butler of ``repo``, created with the seed config if it has no butler.yaml."""
    if not os.path.exists(os.path.join(repo, "butler.yaml")):
        from .butler_setup import make_repo

        return make_repo(repo), True
    return _open(repo), False


def _open(repo: str) -> Butler:
    from lsst.daf.butler import Butler

    try:
        return Butler.from_config(repo, writeable=True)
    except OSError as error:
        raise CommandError(f"cannot open the repository {repo}: {error}") from None


def _add_ingest(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="ingest post-ISR flat FITS files as cpFlatIsrExp datasets",
        description="Ingest post-ISR flat FITS files (one detector per file, or several in a "
                    "multi-extension file) as cpFlatIsrExp datasets with their exposure records, all or "
                    "nothing, and put the run first in <instrument>/defaults.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog_of=_keyword_help,
    )
    parser.add_argument("repo", help="butler repository")
    parser.add_argument("--instrument", required=True, help="registered instrument name")
    parser.add_argument("--run", help="RUN collection of the images (default: <instrument>/flats/ingested)")
    parser.add_argument("--keyword-config", metavar="FILE",
                        help="YAML file of header keyword fields (see below)")
    parser.add_argument("-k", "--keyword", action="append", default=[], metavar="FIELD=VALUE",
                        help="set one field (see below), after --keyword-config; repeatable")
    parser.add_argument("--gain", type=float, help="default gain, electrons per ADU (default_gain)")
    parser.add_argument("--read-noise", type=float, help="default read noise, electrons (default_read_noise)")
    parser.add_argument("--refuse-empty", action="store_true",
                        help="refuse images with no finite or no positive pixel (default: ingest them with "
                             "a warning; the normalization excludes their exposures)")
    parser.add_argument("files", nargs="+", help="FITS files")
    parser.set_defaults(handler=_run_ingest)


class _EpilogOnDemandParser(argparse.ArgumentParser):
    """A parser whose epilog, if ``epilog_of`` is given, is ``epilog_of()`` made only when help is
    shown (it may import modules that the other commands do not need)."""

    def __init__(self, *args: Any, epilog_of: Callable[[], str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.epilog_of = epilog_of

    def format_help(self) -> str:
        if self.epilog_of is not None:
            self.epilog = self.epilog_of()
        return super().format_help()


def _keyword_help() -> str:
    from .header_keywords import HeaderKeywords

    lines = ["header keyword fields (-k FIELD=KEY1,KEY2 or the --keyword-config file; the first key "
             "present wins):"]
    for name, field in HeaderKeywords.model_fields.items():
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        lines.append(f"  {name:27} {shown:25} {field.description or ''}".rstrip())
    return "\n".join(lines)


def _keywords(args: argparse.Namespace) -> HeaderKeywords:
    """The header keywords of the file, then ``--keyword``, then ``--gain`` and ``--read-noise``."""
    import pydantic
    import yaml

    from .header_keywords import HeaderKeywords

    overrides: dict[str, Any] = {}
    for setting in args.keyword:
        field, equals, value = setting.partition("=")
        if not equals:
            raise CommandError(f"--keyword {setting!r} is not FIELD=VALUE")
        overrides[field.strip()] = value
    if args.gain is not None:
        overrides["default_gain"] = args.gain
    if args.read_noise is not None:
        overrides["default_read_noise"] = args.read_noise
    try:
        if args.keyword_config is None:
            return HeaderKeywords.model_validate(overrides)
        return HeaderKeywords.from_file(args.keyword_config, **overrides)
    except (OSError, yaml.YAMLError, pydantic.ValidationError) as error:
        raise CommandError(f"header keywords: {error}") from None


def _run_ingest(args: argparse.Namespace) -> int:
    from .flat_ingest import ingest_flats

    keywords = _keywords(args)
    butler = _open(args.repo)
    result = ingest_flats(butler, args.instrument, args.files, keywords=keywords, run=args.run,
                          refuse_empty=args.refuse_empty)
    print(_report(result))
    return 0


def _report(result: IngestResult) -> str:
    """What went in: every image, then every exposure with its detectors."""
    files = {source.path for source in result.sources}
    new = {exposure.id for exposure in result.new_exposures}
    lines = [f"Ingested {_count(len(result.sources), 'image')} from {_count(len(files), 'file')} into run "
             f"{result.run} (first in {result.umbrella}):"]
    lines += [f"  {source.where} -> exposure {source.exposure.id}, detector {source.detector_id} "
              f"({source.detector.getName()})" for source in result.sources]
    exposures = {source.exposure.id: source.exposure for source in result.sources}
    lines.append(f"{_count(len(exposures), 'exposure')} ({len(new)} new):")
    for exposure_id, exposure in exposures.items():
        detectors = sorted(s.detector_id for s in result.sources if s.exposure.id == exposure_id)
        lines.append(f"  {exposure_id} {exposure.begin.utc.isot} {exposure.exposure_time:g} s "
                     f"{exposure.physical_filter} {exposure.observation_type} "
                     f"{'new' if exposure_id in new else 'existing'}: detectors "
                     f"{', '.join(map(str, detectors))}")
    if empty := [source for source in result.sources if source.emptiness is not None]:
        lines.append(f"{_count(len(empty), 'image')} without a flat level (the normalization excludes their "
                     f"exposures): " + ", ".join(f"{source.where} ({source.emptiness})" for source in empty))
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _add_check(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "check",
        help="check that every dataset has its file and every file its dataset",
        description="Check, after a run or an ingest that failed, that every registered dataset has its "
                    "file with the recorded size, and list the files that no dataset owns (what a write "
                    "interrupted by SIGKILL, a lost node or a full disk leaves). Exits 1 if anything is "
                    "wrong.",
    )
    parser.add_argument("repo", help="butler repository (a local file datastore)")
    parser.add_argument("--remove-orphans", action="store_true",
                        help="delete the files that no dataset owns (only while nothing writes to REPO)")
    parser.set_defaults(handler=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from lsst.daf.butler import Butler

    from .repo_check import check_repository, remove_orphans

    try:
        butler = Butler.from_config(args.repo)
    except OSError as error:
        raise CommandError(f"cannot open the repository {args.repo}: {error}") from None
    try:
        check = check_repository(butler)
    except TypeError as error:
        raise CommandError(str(error)) from None
    print(check.report())
    if args.remove_orphans and check.orphans:
        remove_orphans(check)
        print(f"Removed the {_count(len(check.orphans), 'file')} that no dataset owns.")
        return 1 if check.broken else 0
    return 0 if check.consistent else 1


def _add_verify(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="print the verdicts of flat verifications",
        description="Print a one-screen summary of every flat verification (verifyFlatResults, written "
                    "by the verifyFlat.yaml pipelines) in the collections: the counts, and each failed "
                    "detector and exposure with its failed tests. The status is 3 if one failed.",
    )
    parser.add_argument("repo", help="butler repository")
    parser.add_argument("--collections", required=True, nargs="+", help="collections to search")
    parser.add_argument("-d", "--where", default="", help="butler query constraint")
    parser.set_defaults(handler=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from .verify_summary import VERIFICATION_FAILED, print_verifications

    passed = print_verifications(args.repo, args.collections, sys.stdout, where=args.where)
    return 0 if passed else VERIFICATION_FAILED


_SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (
    _add_camera, _add_register, _add_ingest, _add_verify, add_report_parser, _add_check,
)
"""Functions adding one subcommand's parser each, in the order ``--help`` lists them."""
