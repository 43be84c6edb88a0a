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
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pydantic
import yaml

from lsst.daf.butler import Butler

from .butler_setup import make_repo
from .camera_source import load_camera
from .flat_fits import FlatIngestError, HeaderKeywords
from .flat_ingest import IngestResult, ingest_flats
from .instrument import FlatInstrument
from .report_command import add_report_parser

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
    try:
        return args.handler(args)
    except (FlatIngestError, CommandError, ValueError, LookupError, OSError, ImportError) as error:
        print(f"{_PROG} {args.command}: error: {error}", file=sys.stderr)
        return 1


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``cp-flatnorm`` and its subcommands."""
    parser = argparse.ArgumentParser(prog=_PROG, description="Flat-field normalization tools.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
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
    instrument = FlatInstrument.from_config(args.instrument_config)
    butler, created = _open_or_create(args.repo)
    camera_changed = instrument.register_with_camera(butler, update=args.update)
    camera = instrument.getCamera()
    print(f"{'Created' if created else 'Opened'} repository {args.repo}; registered {instrument.getName()} "
          f"({_count(len(camera), 'detector')}, filters {', '.join(instrument.config.filters)}); camera "
          f"{'certified' if camera_changed else 'already certified, unchanged'} in "
          f"{instrument.makeCalibrationCollectionName()}.")
    return 0


def _open_or_create(repo: str) -> tuple[Butler, bool]:
    """A writeable butler of ``repo``, created with the seed config if it has no butler.yaml."""
    if not os.path.exists(os.path.join(repo, "butler.yaml")):
        return make_repo(repo), True
    try:
        return Butler.from_config(repo, writeable=True), False
    except OSError as error:
        raise CommandError(f"cannot open the repository {repo}: {error}") from None


def _add_ingest(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "ingest",
        help="ingest post-ISR flat FITS files as cpFlatIsrExp datasets",
        description="Ingest post-ISR flat FITS files (one detector per file, or several in a "
                    "multi-extension file) as cpFlatIsrExp datasets with their exposure records, all or "
                    "nothing, and put the run first in <instrument>/defaults.",
        epilog=_keyword_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument("files", nargs="+", help="FITS files")
    parser.set_defaults(handler=_run_ingest)


def _keyword_help() -> str:
    lines = ["header keyword fields (-k FIELD=KEY1,KEY2 or the --keyword-config file; the first key "
             "present wins):"]
    for name, field in HeaderKeywords.model_fields.items():
        default = field.default
        shown = ",".join(default) if isinstance(default, tuple) else str(default)
        lines.append(f"  {name:27} {shown:25} {field.description or ''}".rstrip())
    return "\n".join(lines)


def _keywords(args: argparse.Namespace) -> HeaderKeywords:
    """The header keywords of the file, then ``--keyword``, then ``--gain`` and ``--read-noise``."""
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
    keywords = _keywords(args)
    try:
        butler = Butler.from_config(args.repo, writeable=True)
    except OSError as error:
        raise CommandError(f"cannot open the repository {args.repo}: {error}") from None
    result = ingest_flats(butler, args.instrument, args.files, keywords=keywords, run=args.run)
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
    return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _add_report(subparsers: Any) -> None:
    add_report_parser(subparsers)


_SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (_add_camera, _add_register, _add_ingest, _add_report)
"""Functions adding one subcommand's parser each, in the order ``--help`` lists them."""
