# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""End-to-end demonstration on simulated flats: ``python -m lsst.cp.flatnorm.sim.demo --output DIR``.

1. builds a fresh butler repository in ``DIR/repo`` holding simulated post-ISR flats of the
   SimFlatCam mosaic (with a known truth, three deliberate corruptions, and one detector that was
   not read out in two exposures);
2. runs the real ``pipetask`` on the SimFlatCam ``cpFlat`` pipeline (cpFlatMeasure ->
   cpFlatNormalize at DETECTOR level -> cpFlatCombine), then cpFlatNormalize again at AMP level on the same
   statistics, then cpFlatCombine again without normalization (``exposureScaling=Unity``);
3. reads the scales and flats back from the butler and compares them with the truth (lines with
   "truth"), the normalized flat next to the un-normalized one;
4. colour terms: simulates a camera of two sensor families under a lamp whose colour drifts, with
   one detector missing the reddest exposures, into ``DIR/colour_repo``, runs the chain with
   ``colourTerms=0`` and normalize and combine again with ``colourTerms=1``, and compares that
   detector's flat with the true response at the reference colour (`colour_demo`);
5. focal-plane gradients: simulates sky and dome flats under illuminations that differ in radial
   function, gradient and centre into ``DIR/gradient_repo``, fits the sky reference and the dome's
   gradient and corrects the dome flat to the sky's radial function with pipetask, and compares the
   models with the simulation and the corrected and uncorrected flats with the response the
   corrected one should have (`gradient_demo`);
6. flat verification: makes a flat from clean simulated inputs into ``DIR/verify_repo``, verifies
   it on new flats one amplifier of which stepped by 8%, and prints the verdicts (`verify_demo`);
7. writes figures to ``DIR/figures``;
8. writes the browsable report of the run (``cp-flatnorm report``) to ``DIR/report`` and prints
   the path of its ``index.html``.
"""

from __future__ import annotations

__all__ = ["main", "measure_flats", "read_flats", "residual_matrix", "write_figures"]

import argparse
import contextlib
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.table import Table

from . import colour_demo, gradient_demo, report_demo, verify_demo
from ..report.figures import residual_matrix as table_residual_matrix
from .camera import make_sim_camera
from .figures import plot_exposure_scales, plot_flat_mosaic, plot_focal_plane, plot_residual_matrix
from .flat_quality import (
    MosaicQuality,
    amplifier_regions,
    gauge_constant,
    measure_mosaic_quality,
    response_ratio,
)
from .flat_simulator import FlatSimConfig, FlatTruth
from .repo import SimRepo, build_sim_repo
from .run import NormalizationOutputs, pipeline_uri, read_normalization, run_pipetask

_OUTPUT_COLLECTION = "u/demo/cpFlat"
_UNSCALED_COLLECTION = _OUTPUT_COLLECTION + "Unscaled"
_MISSING_IMAGES = ((1, 7), (2, 7))
"""(exposure index, detector) images that do not exist: detector 7 was not read out in the second
and third exposures (15 s and 20 s), so its un-normalized flat has a lower mean lamp level."""
_ERROR_LIMITS = (-0.03, 0.03)
"""Colour scale of the flat error maps: the un-normalized flat's errors are a few per cent."""
_OUTLIER_SIGMAS = 5.0
"""A flat pixel is an outlier if it strays from its detector's median by more than this many times
the flat's expected (Poisson and read) noise."""


@contextlib.contextmanager
def _stage(title: str) -> Iterator[None]:
    """Print a stage's title, then how long it took."""
    print(f"\n== {title}", flush=True)
    start = time.perf_counter()
    yield
    print(f"   ({title}: {time.perf_counter() - start:.1f} s)", flush=True)


def _build(output: Path, args: argparse.Namespace) -> SimRepo:
    camera = make_sim_camera(amp_width=args.amp_width, amp_height=args.amp_height)
    config = FlatSimConfig(n_exposures=args.exposures, seed=args.seed, missing_images=_MISSING_IMAGES)
    repo = build_sim_repo(output / "repo", camera=camera, config=config)
    n_amps = sum(len(det) for det in camera)
    n_images = len(camera) * len(repo.truth.exposures) - len(repo.truth.missing_images())
    print(f"   repo {repo.root}: {len(camera)} detectors ({n_amps} amplifiers), "
          f"{len(repo.truth.exposures)} flat exposures in {config.physical_filter}, "
          f"{n_images} cpFlatIsrExp images in {repo.image_run}")
    for corruption in repo.truth.corruptions:
        when = "every exposure" if corruption.exposure is None else f"exposure {corruption.exposure}"
        print(f"   simulated {corruption.kind}: detector {corruption.detector}, {when}, amplifiers "
              f"{','.join(corruption.amplifiers)} ({'masked' if corruption.masked else 'not masked'})")
    for exposure, detector in sorted(repo.truth.missing_images()):
        print(f"   simulated missing image: detector {detector} not read out in exposure {exposure}")
    return repo


def _run_pipelines(repo: SimRepo, output: Path, jobs: int) -> None:
    pipeline = pipeline_uri("SimFlatCam", "cpFlat.yaml")
    print(f"   pipetask run -p {pipeline} -i {repo.defaults_collection} -o {_OUTPUT_COLLECTION} -j {jobs}")
    run_pipetask(repo.root, pipeline, [repo.defaults_collection], _OUTPUT_COLLECTION, jobs=jobs,
                 log_path=output / "pipetask_detector.log")
    print(f"   AMP level: pipetask run -p {pipeline}#cpFlatNormalize -c cpFlatNormalize:level=AMP "
          f"-o {_OUTPUT_COLLECTION}Amp (reusing the cpFlatStatistics)")
    run_pipetask(repo.root, f"{pipeline}#cpFlatNormalize", [_OUTPUT_COLLECTION], _OUTPUT_COLLECTION + "Amp",
                 extra_args=["-c", "cpFlatNormalize:level=AMP"], log_path=output / "pipetask_amp.log")
    print(f"   no normalization: pipetask run -p {pipeline}#cpFlatCombine "
          f"-c cpFlatCombine:exposureScaling=Unity -o {_UNSCALED_COLLECTION}")
    run_pipetask(repo.root, f"{pipeline}#cpFlatCombine", [_OUTPUT_COLLECTION], _UNSCALED_COLLECTION,
                 extra_args=["-c", "cpFlatCombine:exposureScaling=Unity"],
                 log_path=output / "pipetask_unscaled.log")
    print(f"   logs in {output}/pipetask_*.log")


def _largest_error(recovered: dict, truth: dict) -> tuple[float, object]:
    """Largest |recovered / truth - 1| over the keys of ``truth``, and its key."""
    errors = {key: abs(recovered[key] / value - 1) for key, value in truth.items()}
    worst = max(errors, key=lambda key: errors[key])
    return errors[worst], worst


def _compare(outputs: NormalizationOutputs, truth: FlatTruth, level: str) -> bool:
    """Print the comparison with the truth; return whether the flagged entries are the expected ones."""
    error, exposure = _largest_error(outputs.exposure_scales(), truth.exposure_scales(level))
    print(f"   {level}: exposure scales E vs truth: largest relative error {error:.2e} "
          f"(exposure {exposure}, {len(truth.exposures)} exposures)")
    rows = "detector" if level == "DETECTOR" else "amplifier"
    true_rows = truth.row_scales(level)
    error, key = _largest_error(outputs.row_scales(), true_rows)
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


def read_flats(repo: SimRepo, collection: str) -> dict[int, np.ndarray]:
    """Read the combined flat image of every detector from a collection."""
    return {
        det.getId(): repo.butler.get(
            "flat", instrument=repo.instrument.getName(), detector=det.getId(),
            physical_filter=repo.simulator.config.physical_filter, collections=collection,
        ).image.array
        for det in repo.simulator.camera
    }


def _response_ratios(
    repo: SimRepo, flats: dict[int, np.ndarray], colour: float | None = None
) -> dict[int, np.ndarray]:
    """flat / true response (at ``colour`` if given) of every detector, NaN outside the usable pixels."""
    truth = repo.truth
    return {det: response_ratio(flat, truth.pixel_response(det, colour=colour), truth.usable_pixels(det))
            for det, flat in flats.items()}


def measure_flats(repo: SimRepo, flats: dict[int, np.ndarray], colour: float | None = None) -> MosaicQuality:
    """Compare the flats of every detector with the true response, on one gauge constant.

    A pixel is an outlier if it is further than ``_OUTLIER_SIGMAS`` times the detector's expected
    flat noise (`FlatTruth.flat_noise`) from the detector's median.  With ``colour``, the truth is
    the response at that lamp colour (for flats normalized with colour terms: the
    `FlatTruth.reference_colour`).
    """
    truth, camera = repo.truth, repo.simulator.camera
    return measure_mosaic_quality(
        _response_ratios(repo, flats, colour),
        {det: amplifier_regions(camera[det]) for det in flats},
        {det: _OUTLIER_SIGMAS * truth.flat_noise(det) for det in flats},
    )


def _print_flat_rows(rows: list[tuple[str, ...]]) -> None:
    """Print (label, normalized, un-normalized) rows under their column titles."""
    width = max(len(label) for label, _, _ in rows)
    print(f"   {'':{width}}   {'normalized':>18}   {'un-normalized':>18}")
    for label, normalized, unnormalized in rows:
        print(f"   {label:{width}}   {normalized:>18}   {unnormalized:>18}")


def _compare_flats(repo: SimRepo, qualities: dict[str, MosaicQuality]) -> None:
    """Print how the normalized and un-normalized flats compare with the true response."""
    truth = repo.truth
    normalized, unnormalized = qualities["normalized"], qualities["un-normalized"]
    print(f"   normalized: {_OUTPUT_COLLECTION}; "
          f"un-normalized (exposureScaling=Unity): {_UNSCALED_COLLECTION}")
    print("   error = flat / (k x true response) - 1, with one constant k per mosaic: the median of "
          "flat / truth over all usable pixels")
    both = (normalized, unnormalized)
    noise = [truth.flat_noise(det) for det in normalized.detectors]
    rows = [
        ("gauge constant k = flat / truth", *(f"{q.gauge:.5g}" for q in both)),
        ("detectors vs truth: largest |error|", *(f"{e:+.2e} (det {d})" for d, e in
                                                  (q.worst_detector() for q in both))),
        ("detectors vs truth: rms error", *(f"{q.detector_rms():.2e}" for q in both)),
        ("amplifiers vs truth: largest |error|", *(f"{e:+.2e} ({d}:{a})" for (d, a), e in
                                                   (q.worst_amplifier() for q in both))),
        ("amplifiers vs truth: rms error", *(f"{q.amplifier_rms():.2e}" for q in both)),
        ("pixels vs truth: robust scatter, median", *(
            f"{np.median([f.pixel_scatter for f in q.detectors.values()]):.2e}" for q in both)),
        (f"pixels vs truth: beyond {_OUTLIER_SIGMAS:g} sigma",
         *(f"{q.outlier_fraction():.3%}" for q in both)),
    ]
    for detector in sorted({det for _, det in truth.missing_images()}):
        rows.append((f"detector {detector} (missing images) vs truth",
                     *(f"{q.detectors[detector].detector_error:+.2e}" for q in both)))
    for corruption in truth.corruptions:
        detector = corruption.detector
        if corruption.kind == "shadow":
            rows.append((f"detector {detector} shadowed amps vs truth", *(
                f"{np.mean([q.detectors[detector].amplifier_errors[a] for a in corruption.amplifiers]):+.2e}"
                for q in both)))
        elif corruption.kind == "saturation":
            rows.append((f"detector {detector} (SAT band) outliers vs truth",
                         *(f"{q.detectors[detector].outlier_fraction:.3%}" for q in both)))
    _print_flat_rows(rows)
    print(f"   (sigma: the normalized flat's expected Poisson and read noise, {np.min(noise):.2e} .. "
          f"{np.max(noise):.2e}, which its robust pixel scatter should match)")


def residual_matrix(
    table: Table, truth: FlatTruth, level: str
) -> tuple[np.ndarray, list[str], list[str], np.ndarray, np.ndarray]:
    """A scale table's log residuals as a (row, exposure) matrix in the truth's row and exposure
    order, with the rejected and invalid entries, row labels and exposure labels (sequence numbers)."""
    residuals, keys, exposures, rejected, invalid = table_residual_matrix(
        table, truth.row_keys(level), [exposure.id for exposure in truth.exposures])
    labels = [f"{key[0]}:{key[1]}" if isinstance(key, tuple) else str(key) for key in keys]
    return residuals, labels, [str(e % 100_000) for e in exposures], rejected, invalid


def write_figures(
    repo: SimRepo,
    results: dict[str, NormalizationOutputs],
    directory: Path,
    flats: dict[str, dict[int, np.ndarray]] | None = None,
) -> list[Path]:
    """Write the demo's figures.

    Parameters
    ----------
    repo : `SimRepo`
        The simulated repository (camera and truth).
    results : `dict` [`str`, `NormalizationOutputs`]
        Normalization outputs by level; must include ``"DETECTOR"``.
    directory : `pathlib.Path`
        Where to write the PNG files (created if needed).
    flats : `dict` [`str`, `dict` [`int`, `numpy.ndarray`]], optional
        Combined flats by name (``"normalized"``, ...) -> ``{detector: image}``.  If given, each is
        divided by its gauge constant (`flat_quality.gauge_constant`) and drawn side by side in
        ``flat_mosaic.png`` (the first sets the shared colour scale), and its error against the
        truth, ``flat / (k x response) - 1``, in ``flat_errors.png``; pixels that are not usable
        (dead amplifier, defect columns) are grey in the first and black in the second.

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
        plot_focal_plane(camera, outputs.row_scales(), paths[-2], f"Recovered {suffix} scales G")
        plot_residual_matrix(*residual_matrix(outputs.table, truth, level), paths[-1])
    start = truth.exposures[0].begin
    times = [(exposure.begin - start).to_value("min") for exposure in truth.exposures]
    recovered = results["DETECTOR"].exposure_scales()
    true_scales = truth.exposure_scales("DETECTOR")
    ids = [exposure.id for exposure in truth.exposures]
    exposure_times = [exposure.exposure_time for exposure in truth.exposures]
    paths.append(directory / "exposure_scales.png")
    plot_exposure_scales(times, exposure_times, [recovered[i] for i in ids], [true_scales[i] for i in ids],
                         paths[-1])
    if flats is not None:
        paths += [directory / "flat_mosaic.png", directory / "flat_errors.png"]
        _plot_flats(repo, flats, *paths[-2:])
    return paths


def _plot_flats(repo: SimRepo, flats: dict[str, dict[int, np.ndarray]], mosaic: Path, errors: Path) -> None:
    """Draw the gauged flats (usable pixels only) and their errors against the truth."""
    gauged, error_maps = {}, {}
    for name, images in flats.items():
        ratios = _response_ratios(repo, images)
        gauge = gauge_constant(ratios.values())
        gauged[f"{name} flat / k (k = {gauge:.4g})"] = {
            det: np.where(np.isfinite(ratios[det]), image / gauge, np.nan) for det, image in images.items()
        }
        error_maps[f"{name}: flat / (k x truth) - 1"] = {
            det: ratio / gauge - 1 for det, ratio in ratios.items()
        }
    plot_flat_mosaic(repo.simulator.camera, gauged, mosaic)
    plot_flat_mosaic(repo.simulator.camera, error_maps, errors, label="flat / (k x true response) - 1",
                     limits=_ERROR_LIMITS, colormap="coolwarm", bad_colour="black")


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
    with _stage("Comparing the combined flats with the truth, with and without normalization"):
        flats = {"normalized": read_flats(repo, _OUTPUT_COLLECTION),
                 "un-normalized": read_flats(repo, _UNSCALED_COLLECTION)}
        qualities = {name: measure_flats(repo, images) for name, images in flats.items()}
        _compare_flats(repo, qualities)
    with _stage("Colour terms: a detector that misses the exposures of extreme lamp colour"):
        colour_repo = colour_demo.build_colour_repo(output / "colour_repo", args.exposures, args.seed,
                                                    max(args.amp_width // 2, 4), max(args.amp_height // 2, 4))
        colour_demo.run_colour_pipelines(colour_repo, output)
        colour = colour_demo.compare_colour_flats(colour_repo)
        colour_demo.print_colour_section(colour_repo, colour)
        ok &= colour.flagged_ok
    with _stage("Focal-plane gradients: a dome flat corrected to the sky's radial function"):
        gradient_repo = gradient_demo.build_gradient_repo_for_demo(output / "gradient_repo",
                                                                   gradient_demo.N_EXPOSURES, args.seed)
        gradient_demo.run_gradient_pipelines(gradient_repo, output, args.jobs)
        gradient = gradient_demo.compare_gradient_flats(gradient_repo)
        gradient_demo.print_gradient_section(gradient_repo, gradient)
    with _stage("Flat verification: new flats, one amplifier of which stepped"):
        verify_demo.demo_section(output)
    with _stage("Writing figures"):
        paths = write_figures(repo, results, output / "figures", flats)
        paths.append(output / "figures" / "residuals_colour.png")
        colour_demo.write_colour_figure(colour_repo, colour, paths[-1])
        paths += gradient_demo.write_gradient_figures(gradient_repo, gradient, output / "figures")
        for path in paths:
            print(f"   wrote {path}")
    with _stage("Writing the report of the run (cp-flatnorm report)"):
        report_demo.write_demo_report(repo, [_OUTPUT_COLLECTION], _UNSCALED_COLLECTION, output / "report")
    print(f"\nDemo finished in {time.perf_counter() - start:.1f} s; flagged entries "
          f"{'match' if ok else 'DO NOT match'} the simulator's corruptions (truth).")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
