# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The demo's gradient section: dome flats corrected to the sky's radial function.

Sky and dome flats of the default SimFlatCam focal plane, with ITL and e2v detectors in a
checkerboard, are simulated into a repository of their own under two illuminations that differ in
radial function, planar gradient and centre (`lsst.cp.flatnorm.sim.illumination`).  The sky flats
go through ``pipelines/SimFlatCam/cpFlatGradientReference.yaml``; its ``flat_gradient_reference``
is certified; the dome flats go through ``pipelines/SimFlatCam/cpFlatCorrected.yaml``, whose
``flat`` is the dome flat with its plane removed and the sky's radial function.  The fitted models
are compared with the simulated illuminations, and the corrected and uncorrected flats with the
response the corrected flat should have: the true pixel response with the dome's illumination
replaced by the sky's radial function (the dome's ITL ratio stays, as the detectors' own response).
The simulated detectors are otherwise identical (no detector or amplifier gain scatter): the
gradient model has no per-detector freedom, so detector-to-detector response differences would be
fitted as large-scale structure.
"""

from __future__ import annotations

__all__ = [
    "N_EXPOSURES",
    "GradientSection",
    "build_gradient_repo_for_demo",
    "compare_gradient_flats",
    "print_gradient_section",
    "run_gradient_pipelines",
    "write_gradient_figures",
]

import dataclasses
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..focal_plane_binning import bin_detector
from ..gradient_model import FlatGradientModel, FlatGradientUncertainties
from .camera import make_sim_camera
from .figures import plot_flat_mosaic
from .flat_simulator import FlatSimConfig
from .gradient_repo import GradientRepo, build_gradient_repo, certify_gradient_reference
from .illumination import (
    SIM_FLAT_CAM_NODES,
    FocalPlaneIllumination,
    dome_illumination,
    science_radius,
    sky_illumination,
    with_sensor_families,
)
from .run import pipeline_uri, run_pipetask

SKY_COLLECTION = "u/demo/cpFlatGradientReference"
DOME_COLLECTION = "u/demo/cpFlatCorrected"
N_EXPOSURES = 6
"""Sky and dome exposures each (the default SimFlatCam geometry whatever the main section's)."""
BIN = 16
"""Pixels per bin side of the comparison (the SimFlatCam pipelines' bin_factor)."""
BOUNDARY = 10
_ERROR_LIMITS = (-0.04, 0.04)


def build_gradient_repo_for_demo(root: Path, n_exposures: int, seed: int) -> GradientRepo:
    """Simulate the section's sky and dome flats (``n_exposures`` each) into a fresh repository."""
    camera = with_sensor_families(make_sim_camera())
    radius = SIM_FLAT_CAM_NODES[-1]
    # The two simulations' shared settings, of several types (FlatSimConfig's fields).
    common: dict[str, Any] = dict(
        n_exposures=n_exposures, detector_response_sigma=0.0, amp_gain_error_sigma=0.0, vignetting=0.0,
        colour_slope_max=0.0, dead_amplifier=None, shadow=None, saturation=None,
    )
    dome = FlatSimConfig(seed=seed, illumination=dome_illumination(radius, nodes=SIM_FLAT_CAM_NODES),
                         **common)
    sky = FlatSimConfig(seed=seed + 1, illumination=sky_illumination(radius, nodes=SIM_FLAT_CAM_NODES),
                        day_obs=dome.day_obs + 1, start_time="2024-06-02T20:00:00", **common)
    return build_gradient_repo(root, camera=camera, dome=dome, sky=sky)


def run_gradient_pipelines(repo: GradientRepo, output: Path, jobs: int = 1) -> None:
    """The gradient reference from the sky flats, certified; then the corrected dome flats."""
    reference = pipeline_uri("SimFlatCam", "cpFlatGradientReference.yaml")
    print(f"   pipetask run -p {reference} -i {repo.sky_collection} -o {SKY_COLLECTION}")
    run_pipetask(repo.root, reference, [repo.sky_collection], SKY_COLLECTION, jobs=jobs,
                 log_path=output / "pipetask_gradient_reference.log")
    print(f"   certify flat_gradient_reference in {repo.dome.calib_collection}")
    certify_gradient_reference(repo.butler, SKY_COLLECTION, repo.dome.calib_collection, repo.physical_filter,
                               repo.instrument.getName())
    corrected = pipeline_uri("SimFlatCam", "cpFlatCorrected.yaml")
    print(f"   pipetask run -p {corrected} -i {repo.dome.defaults_collection} -o {DOME_COLLECTION}")
    run_pipetask(repo.root, corrected, [repo.dome.defaults_collection], DOME_COLLECTION, jobs=jobs,
                 log_path=output / "pipetask_gradient_corrected.log")


@dataclasses.dataclass
class GradientSection:
    """What the gradient section measured."""

    models: dict[str, FlatGradientModel]
    """The fitted ``flat_gradient_reference`` (``"sky"``) and ``flat_gradient`` (``"dome"``)."""
    truths: dict[str, FocalPlaneIllumination]
    """The simulated illuminations."""
    errors: dict[str, dict[int, np.ndarray]]
    """``flat / (k x target) - 1`` of every science detector, ``"corrected"`` and ``"uncorrected"``."""
    flats: dict[str, dict[int, np.ndarray]]
    """The flats divided by ``k``, by the same names."""
    binned: dict[str, np.ndarray]
    """The errors in ``BIN``-pixel bins of the detectors, pooled, by the same names."""
    bin_noise: float
    """Expected Poisson and read noise of one bin of the dome flat."""

    def radial_scale(self, name: str) -> float:
        """The constant that puts the fitted radial function of model ``name`` on the simulated one:
        a flat's overall scale is arbitrary (here the normalization's gauge), so the fitted nodes
        times the normalization factor are the true ones times a constant, estimated by their
        inverse-variance weighted ratio."""
        model, truth = self.models[name], self.truths[name]
        ratio = np.array(model.radial_spline_values) / truth.radial_values
        weight = (np.array(truth.radial_values) / self.uncertainties(name).radial_spline_values)**2
        return float(np.sum(weight * ratio) / np.sum(weight))

    def uncertainties(self, name: str) -> FlatGradientUncertainties:
        """The uncertainties of model ``name``, which every fit gives."""
        errors = self.models[name].uncertainties
        assert errors is not None  # the gradient task always writes them
        return errors

    def pulls(self, name: str) -> dict[str, np.ndarray]:
        """(fitted - true) / uncertainty of every fitted parameter of the model ``name`` (the radial
        function on the simulated one's scale, `radial_scale`)."""
        model, truth = self.models[name], self.truths[name]
        errors = self.uncertainties(name)
        scale = self.radial_scale(name)
        result = {"radial": (np.array(model.radial_spline_values) / scale - truth.radial_values)
                  / (np.array(errors.radial_spline_values) / scale),
                  "itl_ratio": np.array([(model.itl_ratio - truth.itl_ratio) / errors.itl_ratio]),
                  "gradient": (np.array([model.gradient_x, model.gradient_y]) - truth.gradient)
                  / np.array([errors.gradient_x, errors.gradient_y])}
        if np.isfinite(errors.centroid_delta_x):
            offset = np.array([model.centroid_delta_x, model.centroid_delta_y]) - truth.centre_offset
            result["centre"] = offset / np.array([errors.centroid_delta_x, errors.centroid_delta_y])
        return result


def compare_gradient_flats(repo: GradientRepo) -> GradientSection:
    """Read the models and flats back and compare them with the simulation."""
    butler, camera = repo.butler, repo.dome.simulator.camera
    data_id = {"instrument": repo.instrument.getName(), "physical_filter": repo.physical_filter}
    models = {"sky": butler.get("flat_gradient_reference", data_id, collections=SKY_COLLECTION),
              "dome": butler.get("flat_gradient", data_id, collections=DOME_COLLECTION)}
    dome_sim, sky_sim = repo.dome.simulator, repo.sky
    sky_truth, dome_truth = sky_sim.config.illumination, dome_sim.config.illumination
    assert sky_truth is not None and dome_truth is not None  # the repository simulates both
    truths = {"sky": sky_truth, "dome": dome_truth}
    images: dict[str, dict[int, np.ndarray]] = {"uncorrected": {}, "corrected": {}}
    ratios: dict[str, dict[int, np.ndarray]] = {"uncorrected": {}, "corrected": {}}
    for detector in camera:
        if detector.type != "SCIENCE":
            continue
        det = detector.getId()
        target = (dome_sim.response(det) / truths["dome"].detector_map(detector)
                  * truths["sky"].radial_map(detector) * truths["dome"].family_factor(detector))
        usable = dome_sim.usable(det)
        for name, dataset in (("uncorrected", "flat_uncorrected"), ("corrected", "flat")):
            image = butler.get(dataset, data_id, detector=det, collections=DOME_COLLECTION).image.array
            images[name][det] = image
            ratios[name][det] = np.where(usable, image / target, np.nan)
    errors, flats, binned = {}, {}, {}
    for name in ratios:
        k = float(np.nanmedian(np.concatenate([r.ravel() for r in ratios[name].values()])))
        errors[name] = {det: ratio / k - 1 for det, ratio in ratios[name].items()}
        flats[name] = {det: np.where(np.isfinite(ratios[name][det]), image / k, np.nan)
                       for det, image in images[name].items()}
        binned[name] = np.concatenate([bin_detector(error, None, BIN, BOUNDARY)[2]
                                       for error in errors[name].values()])
    noise = float(np.mean([dome_sim.truth.flat_noise(det) for det in errors["corrected"]])) / BIN
    return GradientSection(models, truths, errors, flats, binned, noise)


def print_gradient_section(repo: GradientRepo, section: GradientSection) -> None:
    """Print the fitted models against the truth and the flats' errors against the target."""
    camera = repo.dome.simulator.camera
    types = sorted({det.physical_type for det in camera if det.type == "SCIENCE"})
    print(f"   camera: SimFlatCam, science detectors {' and '.join(types)} in a checkerboard; focal plane "
          f"{science_radius(camera):.2f} mm in radius; {len(repo.sky.exposures)} sky and "
          f"{len(repo.dome.simulator.exposures)} dome exposures")
    print("   fitted model vs simulated illumination (pull = (fit - truth) / the fit's uncertainty):")
    for name in ("sky", "dome"):
        model, truth = section.models[name], section.truths[name]
        fit = model.fit
        assert fit is not None  # the gradient task always writes its summary
        pulls = section.pulls(name)
        worst = float(np.max(np.abs(np.concatenate(list(pulls.values())))))
        centre = (f"centre offset ({model.centroid_delta_x:+.4f}, {model.centroid_delta_y:+.4f}) mm, truth "
                  f"({truth.centre_offset[0]:+.4f}, {truth.centre_offset[1]:+.4f}); " if "centre" in pulls
                  else "")
        print(f"   {name:>4}: gradient ({model.gradient_x:+.3e}, {model.gradient_y:+.3e}) /mm, truth "
              f"({truth.gradient[0]:+.3e}, {truth.gradient[1]:+.3e}); {centre}ITL ratio "
              f"{model.itl_ratio:.5f}, truth {truth.itl_ratio:.5f}; {fit.n_bins} bins, "
              f"{fit.n_rejected} rejected; largest |pull| {worst:.2f} "
              f"(radial profile {np.max(np.abs(pulls['radial'])):.2f})")
    print("   error = flat / (k x target) - 1, target = true response with the dome's illumination replaced "
          "by the sky's radial function")
    print(f"   {'':34} {'uncorrected':>12} {'corrected':>12}")
    rows = [
        (f"{BIN} x {BIN}-pixel bins: rms error",
         *(np.std(section.binned[n]) for n in ("uncorrected", "corrected"))),
        (f"{BIN} x {BIN}-pixel bins: largest |error|",
         *(np.max(np.abs(section.binned[n])) for n in ("uncorrected", "corrected"))),
        ("pixels: rms error", *(np.nanstd(np.concatenate([e.ravel() for e in section.errors[n].values()]))
                                for n in ("uncorrected", "corrected"))),
    ]
    for label, uncorrected, corrected in rows:
        print(f"   {label:34} {uncorrected:12.2e} {corrected:12.2e}")
    ratio = np.std(section.binned["corrected"]) / section.bin_noise
    print(f"   (a bin's expected Poisson and read noise: {section.bin_noise:.2e}; the corrected flat's "
          f"binned rms is {ratio:.2f} times it)")
    largest_pull = max(float(np.max(np.abs(np.concatenate(list(section.pulls(name).values())))))
                       for name in section.models)
    at_noise = "yes" if ratio < 1.5 else "NO"
    print(f"   fitted models within 5 sigma of the simulation: {'yes' if largest_pull < 5 else 'NO'}; "
          f"corrected flat at the binned flat's noise (rms below 1.5 sigma): {at_noise}")


def write_gradient_figures(repo: GradientRepo, section: GradientSection, directory: Path) -> list[Path]:
    """The flats side by side, their errors, the radial profiles, and the fits' QA figures."""
    directory.mkdir(parents=True, exist_ok=True)
    camera = repo.dome.simulator.camera
    paths = [directory / "gradient_flats.png", directory / "gradient_errors.png",
             directory / "gradient_radial_profiles.png"]
    names = ("uncorrected", "corrected")
    plot_flat_mosaic(camera, {f"{name} dome flat / k": section.flats[name] for name in names}, paths[0])
    plot_flat_mosaic(camera, {f"{name}: flat / (k x target) - 1": section.errors[name] for name in names},
                     paths[1], label="flat / (k x target) - 1", limits=_ERROR_LIMITS, colormap="coolwarm",
                     bad_colour="black")
    _plot_radial_profiles(section, paths[2])
    data_id = {"instrument": repo.instrument.getName(), "physical_filter": repo.physical_filter}
    for name, collection in (("sky", SKY_COLLECTION), ("dome", DOME_COLLECTION)):
        for dataset in ("gradient_model_residual_plot", "gradient_radial_model_plot"):
            uri = repo.butler.getURI(dataset, data_id, collections=collection)
            paths.append(directory / f"{name}_{dataset.removesuffix('_plot')}.png")
            with uri.as_local() as local:
                shutil.copyfile(local.ospath, paths[-1])
    return paths


def _plot_radial_profiles(section: GradientSection, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot(1, 1, 1)
    for name, colour in (("sky", "tab:blue"), ("dome", "tab:red")):
        model, truth = section.models[name], section.truths[name]
        radius = np.linspace(0, model.radial_spline_nodes[-1], 300)
        scale = 1 / section.radial_scale(name)
        axes.plot(radius, truth.as_model().radial_model(radius), color=colour, lw=3, alpha=0.4,
                  label=f"{name}: simulated")
        axes.plot(radius, model.radial_model(radius) * scale, color=colour, ls="--",
                  label=f"{name}: fitted (x {scale:.4f})")
        errors = np.array(section.uncertainties(name).radial_spline_values) * scale
        axes.errorbar(model.radial_spline_nodes, np.array(model.radial_spline_values) * scale, yerr=errors,
                      fmt="o", color=colour, ms=3)
    axes.set_xlabel("radius (mm)")
    axes.set_ylabel("radial function")
    axes.set_title("Radial functions: simulated and fitted (nodes with their uncertainties)")
    axes.legend()
    figure.savefig(path, dpi=110)
