# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""End-to-end demonstration on simulated flats: ``python -m lsst.cp.pipe.sim.demo --output DIR``.

1. builds a fresh butler repository in ``DIR/repo`` holding simulated post-ISR flats of the
   SimFlatCam mosaic (with a known truth and three deliberate corruptions);
2. runs the real ``pipetask`` on the SimFlatCam ``cpFlat`` pipeline (cpFlatMeasure ->
   cpFlatNorm at DETECTOR level -> cpFlatCombine), then cpFlatNorm again at AMP level on the same
   statistics;
3. reads the scales and flats back from the butler and compares them with the truth (lines with
   "truth");
4. writes figures to ``DIR/figures``.
"""

from __future__ import annotations

__all__ = ["main", "write_figures"]

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from .camera import make_sim_camera
from .figures import plot_exposure_scales, plot_focal_plane, plot_residual_matrix
from .flat_simulator import FlatSimConfig, FlatTruth
from .repo import SimRepo, build_sim_repo
from .run import NormalizationOutputs, pipeline_path, read_normalization, run_pipetask

_OUTPUT_COLLECTION = "u/demo/cpFlat"


@contextlib.contextmanager
def _stage(title: str) -> Iterator[None]:
    """Print a stage's title, then how long it took."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    yield
    print(f"   ({title}: {time.perf_counter() - start:.1f} s)", flush=True)


def _build(output: Path, args: argparse.Namespace) -> SimRepo:
    camera = make_sim_camera(amp_width=args.amp_width, amp_height=args.amp_height)
    config = FlatSimConfig(n_exposures=args.exposures, seed=args.seed)
    repo = build_sim_repo(output / "repo", camera=camera, config=config)
    n_amps = sum(len(det) for det in camera)
    print(f"   repo {repo.root}: {len(camera)} detectors ({n_amps} amplifiers), "
          f"{len(repo.truth.exposures)} flat exposures in {config.physical_filter}, "
          f"{len(camera) * len(repo.truth.exposures)} cpFlatProc images in {repo.image_run}")
    for corruption in repo.truth.corruptions:
        when = "every exposure" if corruption.exposure is None else f"exposure {corruption.exposure}"
        print(f"   simulated {corruption.kind}: detector {corruption.detector}, {when}, amplifiers "
              f"{','.join(corruption.amplifiers)} ({'masked' if corruption.masked else 'not masked'})")
    return repo


def _run_pipelines(repo: SimRepo, output: Path, jobs: int) -> None:
    pipeline = pipeline_path("SimFlatCam", "cpFlat.yaml")
    print(f"   pipetask run -p {pipeline} -i {repo.defaults_collection} -o {_OUTPUT_COLLECTION} -j {jobs}")
    run_pipetask(repo.root, pipeline, [repo.defaults_collection], _OUTPUT_COLLECTION, jobs=jobs,
                 log_path=output / "pipetask_detector.log")
    print(f"   AMP level: pipetask run -p {pipeline}#cpFlatNorm -c cpFlatNorm:level=AMP "
          f"-o {_OUTPUT_COLLECTION}Amp (reusing the flatStats)")
    run_pipetask(repo.root, f"{pipeline}#cpFlatNorm", [_OUTPUT_COLLECTION], _OUTPUT_COLLECTION + "Amp",
                 extra_args=["-c", "cpFlatNorm:level=AMP"], log_path=output / "pipetask_amp.log")
    print(f"   logs in {output}/pipetask_*.log")


def _largest_error(recovered: dict, truth: dict) -> tuple[float, object]:
    """Largest |recovered / truth - 1| over the keys of ``truth``, and its key."""
    errors = {key: abs(recovered[key] / value - 1) for key, value in truth.items()}
    worst = max(errors, key=errors.get)
    return errors[worst], worst


def _recovered_rows(outputs: NormalizationOutputs, level: str) -> dict:
    det_scale = outputs.scales["detScale"]
    if level == "DETECTOR":
        return {int(det): float(g) for det, g in det_scale.items()}
    return {(int(det), str(amp)): float(g) for det, amps in det_scale.items() for amp, g in amps.items()}


def _compare(outputs: NormalizationOutputs, truth: FlatTruth, level: str) -> bool:
    """Print the comparison with the truth; return whether the flagged entries are the expected ones."""
    error, exposure = _largest_error(outputs.exposure_scales(), truth.exposure_scales(level))
    print(f"   {level}: exposure scales E vs truth: largest relative error {error:.2e} "
          f"(exposure {exposure}, {len(truth.exposures)} exposures)")
    rows = "detector" if level == "DETECTOR" else "amplifier"
    true_rows = truth.row_scales(level)
    error, key = _largest_error(_recovered_rows(outputs, level), true_rows)
    print(f"   {level}: {rows} scales G vs truth: largest relative error {error:.2e} "
          f"({rows} {key}, {len(true_rows)} {rows}s)")
    ok = True
    for flag, expected in (("REJECTED", truth.expected_rejected(level)),
                           ("INVALID", truth.expected_invalid(level))):
        found = outputs.entries(flag)
        match = found == expected
        ok &= match
        print(f"   {level}: {len(found)} {flag.lower()} entries; the simulator's corrupted entries "
              f"(truth): {len(expected)}; identical: {'yes' if match else 'NO'}")
        for entry in sorted(found ^ expected):
            print(f"      {'unexpected' if entry in found else 'missed'}: {entry}")
    masked = [c for c in truth.corruptions if c.masked]
    for corruption in masked:
        kept = not any(entry[:2] == (corruption.exposure, corruption.detector)
                       for entry in outputs.entries("REJECTED"))
        verdict = "kept, as the truth says" if kept else "REJECTED, against the truth"
        print(f"   {level}: masked {corruption.kind} on exposure {corruption.exposure}, detector "
              f"{corruption.detector}: {verdict}")
        ok &= kept
    return ok


def _compare_flats(repo: SimRepo) -> None:
    """Print how the combined flats compare with the true pixel response."""
    truth = repo.truth
    shadows = {c.detector: c for c in truth.corruptions if c.kind == "shadow"}
    offsets, widths, expected = [], [], []
    for det in repo.simulator.camera:
        flat = repo.butler.get("flat", instrument=repo.instrument.getName(), detector=det.getId(),
                               physical_filter=repo.simulator.config.physical_filter,
                               collections=_OUTPUT_COLLECTION)
        usable = truth.usable_pixels(det.getId())
        ratio = np.ones(usable.shape)
        ratio[usable] = flat.image.array[usable] / truth.pixel_response(det.getId())[usable]
        if det.getId() in shadows:
            shadow = shadows[det.getId()]
            in_shadow = np.zeros_like(usable)
            for amp in det:
                if amp.getName() in shadow.amplifiers:
                    box = amp.getBBox()
                    in_shadow[box.getMinY():box.getMaxY() + 1, box.getMinX():box.getMaxX() + 1] = True
            print(f"   flat of detector {det.getId()} vs truth: median ratio - 1 = "
                  f"{np.median(ratio[usable & in_shadow]) - 1:+.2e} under the shadow of exposure "
                  f"{shadow.exposure}, {np.median(ratio[usable & ~in_shadow]) - 1:+.2e} elsewhere "
                  "(the shadowed exposure is in the stack: its pixels there must be clipped)")
            continue
        ratio = ratio[usable]
        offsets.append(np.median(ratio) - 1)
        widths.append(1.4826 * np.median(np.abs(ratio - np.median(ratio))))
        expected.append(truth.flat_noise(det.getId()))
    print(f"   flats of the other {len(offsets)} detectors vs truth: largest |median ratio - 1| "
          f"{np.max(np.abs(offsets)):.2e}; robust pixel scatter {np.min(widths):.2e} .. {np.max(widths):.2e} "
          f"(Poisson expectation {np.min(expected):.2e} .. {np.max(expected):.2e})")


def _residual_matrix(outputs: NormalizationOutputs, truth: FlatTruth, level: str) -> tuple:
    keys = truth.row_keys(level)
    exposures = [exposure.id for exposure in truth.exposures]
    row_index = {key: i for i, key in enumerate(keys)}
    column_index = {exposure: j for j, exposure in enumerate(exposures)}
    residuals = np.full((len(keys), len(exposures)), np.nan)
    rejected = np.zeros(residuals.shape, dtype=bool)
    invalid = np.zeros(residuals.shape, dtype=bool)
    for row in outputs.table:
        key = int(row["detector"]) if level == "DETECTOR" else (int(row["detector"]), str(row["amplifier"]))
        i, j = row_index[key], column_index[int(row["exposure"])]
        residuals[i, j] = row["log_residual"]
        rejected[i, j] = row["flag"] == "REJECTED"
        invalid[i, j] = row["flag"] == "INVALID"
    labels = [str(key) if level == "DETECTOR" else f"{key[0]}:{key[1]}" for key in keys]
    return residuals, labels, [str(e % 100_000) for e in exposures], rejected, invalid


def write_figures(repo: SimRepo, results: dict[str, NormalizationOutputs], directory: Path) -> list[Path]:
    """Write the demo's figures.

    Parameters
    ----------
    repo : `SimRepo`
        The simulated repository (camera and truth).
    results : `dict` [`str`, `NormalizationOutputs`]
        Normalization outputs by level; must include ``"DETECTOR"``.
    directory : `pathlib.Path`
        Where to write the PNG files (created if needed).

    Returns
    -------
    paths : `list` [`pathlib.Path`]
        The files written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    camera, truth = repo.simulator.camera, repo.truth
    for level, outputs in results.items():
        suffix = level.lower()
        paths += [directory / f"focal_plane_{suffix}.png", directory / f"residuals_{suffix}.png"]
        plot_focal_plane(camera, outputs.scales["detScale"], paths[-2], f"Recovered {suffix} scales G")
        plot_residual_matrix(*_residual_matrix(outputs, truth, level), paths[-1])
    start = truth.exposures[0].begin
    times = [(exposure.begin - start).to_value("min") for exposure in truth.exposures]
    recovered = results["DETECTOR"].exposure_scales()
    true_scales = truth.exposure_scales("DETECTOR")
    ids = [exposure.id for exposure in truth.exposures]
    exposure_times = [exposure.exposure_time for exposure in truth.exposures]
    paths.append(directory / "exposure_scales.png")
    plot_exposure_scales(times, exposure_times, [recovered[i] for i in ids], [true_scales[i] for i in ids],
                         paths[-1])
    return paths


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--output", required=True, type=Path, help="Directory for the repo, logs, figures.")
    parser.add_argument("--exposures", type=int, default=10, help="Number of flat exposures.")
    parser.add_argument("--amp-width", type=int, default=32, help="Amplifier width in pixels.")
    parser.add_argument("--amp-height", type=int, default=64, help="Amplifier height in pixels.")
    parser.add_argument("--seed", type=int, default=FlatSimConfig.seed, help="Simulation seed.")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="pipetask processes.")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demonstration; return 0 if the flagged entries are exactly the corrupted ones."""
    args = _parse(argv)
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with _stage("Simulating flats and building the repository"):
        repo = _build(output, args)
    with _stage("Running the pipeline with pipetask"):
        _run_pipelines(repo, output, args.jobs)
    results = {}
    with _stage("Reading the scales back and comparing with the truth"):
        ok = True
        for level, collection in (("DETECTOR", _OUTPUT_COLLECTION), ("AMP", _OUTPUT_COLLECTION + "Amp")):
            results[level] = read_normalization(repo.butler, collection, repo.instrument.getName(),
                                                repo.simulator.config.physical_filter)
            ok &= _compare(results[level], repo.truth, level)
        _compare_flats(repo)
    with _stage("Writing figures"):
        for path in write_figures(repo, results, output / "figures"):
            print(f"   wrote {path}")
    print(f"\nDemo finished in {time.perf_counter() - start:.1f} s; flagged entries "
          f"{'match' if ok else 'DO NOT match'} the simulator's corruptions (truth).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
