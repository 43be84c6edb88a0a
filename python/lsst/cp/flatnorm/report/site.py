# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Write a report (`~lsst.cp.flatnorm.report.content.ReportContent`) as a static HTML site.

The site opens from the file system with no server and no network: its pages link to each other
by relative paths, and its one style sheet and one script (``report.css``, ``report.js``, written
for this package: sortable tables, zoomable images) are copied beside ``index.html``.  Pages:

- ``index.html``: the run, the verdicts, focal-plane maps of the flat and of the verdicts whose
  detectors link to their pages, and tables of detectors and exposures;
- ``normalization.html``: exposure scales against time, the detector scales on the focal plane,
  the residual matrix with rejected and invalid entries marked, the colour terms where fitted;
- ``gradients.html``: the fitted gradient, its radial function and the fit's QA figures;
- ``detectors/det_<id>.html``: the binned flat, amplifier levels and scatter, flagged entries, each
  input's residual, the change against the previous flat;
- ``exposures/exp_<id>.html``: the exposure's scale, its detectors' residuals, why it was flagged.
"""

from __future__ import annotations

__all__ = ["write_site"]

import html
import math
import shutil
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import matplotlib.colors
import numpy as np
import numpy.typing as npt

from ..focal_plane_mosaic import make_mosaic, mosaic_geometry
from ..sim.figures import plot_focal_plane, plot_residual_matrix
from .content import DetectorContent, ReportContent
from .figures import (
    focal_plane_svg,
    residual_matrix,
    save_array,
    save_exposure_scales,
    save_radial_function,
    table_level,
    tiles,
)

_STATIC = ("report.css", "report.js")
_VERDICT_COLOURS = {True: "#3a9d5d", False: "#d1495b", None: "#c8c8c8"}
_FLAG_REASONS = {
    "REJECTED": "rejected: its level strays from the separable model (G x E) beyond the clipping limit",
    "INVALID": "invalid: no usable measurement (not finite, not positive, or no usable pixel)",
}
_TILE_COLUMNS = 10
_LIMIT_STRIDE = 7


def _cell(value: object) -> str:
    """A table cell; numbers carry their value for sorting and are shown to 5 significant digits."""
    if isinstance(value, (float, np.floating)):
        shown = "nan" if not math.isfinite(value) else f"{value:.5g}"
        return f'<td data-value="{value!r}">{shown}</td>'
    if isinstance(value, (int, np.integer)):
        return f'<td data-value="{value}">{value}</td>'
    return f"<td>{value}</td>"  # pre-escaped HTML


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], table_id: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    id_attribute = f' id="{table_id}"' if table_id else ""
    return (f'<table class="sortable"{id_attribute}><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _image(source: str, alt: str, caption: str = "") -> str:
    figure = f'<img class="zoomable" src="{source}" alt="{html.escape(alt)}">'
    return f"<figure>{figure}<figcaption>{caption}</figcaption></figure>" if caption else figure


def _link(href: str, text: str) -> str:
    return f'<a href="{href}">{html.escape(text)}</a>'


def _page(path: Path, title: str, body: str, depth: int) -> None:
    up = "../" * depth
    navigation = " · ".join(_link(f"{up}{page}", name) for page, name in (
        ("index.html", "Run"), ("normalization.html", "Normalization"), ("gradients.html", "Gradients"),
        ("index.html#detectors", "Detectors"), ("index.html#exposures", "Exposures")))
    path.write_text(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><link rel=\"icon\" href=\"data:,\">"
        f"<link rel=\"stylesheet\" href=\"{up}report.css\"></head><body>"
        f"<nav>{navigation}</nav><main><h1>{html.escape(title)}</h1>{body}</main>"
        f"<script src=\"{up}report.js\"></script></body></html>\n")


def _detector_page(det_id: int) -> str:
    return f"detectors/det_{det_id:03d}.html"


def _exposure_page(exposure: int) -> str:
    return f"exposures/exp_{exposure}.html"


def _limits(arrays: Iterable[npt.NDArray[np.floating]], symmetric: bool) -> tuple[float, float]:
    """Colour scale of images: the 2nd and 98th percentiles of their values, or +- the 95th of their
    absolute values (a dead amplifier or cosmic rays do not set the scale); from every
    ``_LIMIT_STRIDE``-th value of each (enough for a percentile, and a full run's residuals would
    otherwise be copied whole)."""
    values = np.concatenate([a.ravel()[::_LIMIT_STRIDE] for a in arrays] or [np.zeros(0)])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return (-1.0, 1.0) if symmetric else (0.0, 1.0)
    if symmetric:
        limit = max(float(np.percentile(np.abs(values), 95.0)), 1e-5)
        return -limit, limit
    low, high = (float(v) for v in np.percentile(values, (2.0, 98.0)))
    return (low, high) if high > low else (low - 1e-3, high + 1e-3)


def _colour(value: float, limits: tuple[float, float]) -> str:
    if not math.isfinite(value):
        return _VERDICT_COLOURS[None]
    low, high = limits
    fraction = min(max((value - low) / (high - low), 0.0), 1.0)
    return matplotlib.colors.to_hex(matplotlib.colormaps["viridis"](fraction))


class _SiteWriter:
    """Writes the pages of one report into ``output``."""

    def __init__(self, content: ReportContent, output: Path):
        self.content = content
        self.output = output
        self.flat_limits = _limits((d.binned for d in content.detectors.values()), symmetric=False)
        self.residual_limits = _limits((r for d in content.detectors.values() for r in d.residuals.values()),
                                       symmetric=True)
        self.change_limits = _limits((d.change for d in content.detectors.values() if d.change is not None),
                                     symmetric=True)

    def write(self) -> Path:
        for directory in ("img", "detectors", "exposures"):
            (self.output / directory).mkdir(parents=True, exist_ok=True)
        for name in _STATIC:
            with resources.as_file(resources.files(__package__) / "static" / name) as source:
                shutil.copyfile(source, self.output / name)
        self.index()
        self.normalization()
        self.gradients()
        for detector in self.content.detectors.values():
            self.detector(detector)
        for exposure in self.content.exposures:
            self.exposure(exposure)
        return self.output / "index.html"

    def verdict(self, det_id: int) -> bool | None:
        verdicts = self.content.verdicts
        return None if verdicts is None else verdicts.get(det_id)

    def verdict_text(self, det_id: int) -> str:
        return {True: "pass", False: "FAIL", None: "not verified"}[self.verdict(det_id)]

    def index(self) -> None:
        content, summary = self.content, self.content.summary
        run = _table(["item", "value"], [
            ("instrument", html.escape(summary.instrument)),
            ("physical filter", html.escape(summary.physical_filter)),
            ("collections", html.escape(", ".join(summary.collections))),
            (f"{summary.flat_dataset_type} run", html.escape(summary.flat_run)),
            ("pipeline (task labels)", html.escape(", ".join(summary.labels) or "unknown")),
            ("detectors, exposures", f"{len(content.detectors)}, {len(content.exposures)}"),
            ("report written", summary.written),
        ], "run")
        versions = _table(["package", "version"], [(html.escape(name), html.escape(version))
                                                   for name, version in summary.versions.items()], "versions")
        if content.verdicts is None:
            verdict = ("<p class=\"verdict none\">Not verified: no verification results in these "
                       "collections.</p>")
        else:
            passed = sum(content.verdicts.values())
            verdict = (f"<p class=\"verdict\">{passed} detectors pass, "
                       f"{len(content.verdicts) - passed} fail, "
                       f"{len(content.detectors) - len(content.verdicts)} not verified.</p>")
        titles = {det_id: f"{d.detector.getName()} ({det_id}): median {d.median:.4g}, "
                          f"{self.verdict_text(det_id)}"
                  for det_id, d in content.detectors.items()}
        medians = np.array([d.median for d in content.detectors.values()])
        finite = medians[np.isfinite(medians)]
        map_limits = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        flat_map = focal_plane_svg(content.camera, {i: _colour(d.median, map_limits)
                                                    for i, d in content.detectors.items()},
                                   titles, _detector_page, "flat-map")
        verdict_map = focal_plane_svg(content.camera, {i: _VERDICT_COLOURS[self.verdict(i)]
                                                       for i in content.detectors}, titles, _detector_page,
                                      "verdict-map")
        mosaic = self.mosaic()
        detectors = _table(["detector", "name", "type", "median", "flagged entries", "verdict"], [
            (det_id, _link(_detector_page(det_id), d.detector.getName()), d.detector.type, d.median,
             self.n_flagged(detector=det_id), self.verdict_text(det_id))
            for det_id, d in content.detectors.items()], "detector-table")
        exposure_headers = ["exposure", "obs_id", "start (UTC)", "exposure time (s)", "reason",
                            "flagged entries"]
        exposures = _table(exposure_headers, [
            (e.id, _link(_exposure_page(e.id), e.obs_id), e.start, e.exposure_time, html.escape(e.reason),
             self.n_flagged(exposure=e.id)) for e in content.exposures.values()], "exposure-table")
        body = (f"<section id=\"run-summary\"><h2>Run</h2>{run}<details><summary>Software versions "
                f"({len(summary.versions)})</summary>{versions}</details></section>"
                f"<section id=\"verdicts\"><h2>Verdict</h2>{verdict}</section>"
                "<section id=\"maps\"><h2>Focal plane</h2><div class=\"maps\">"
                f"<figure>{flat_map}<figcaption>Median of each detector's flat (colour scale "
                f"{map_limits[0]:.4g} to {map_limits[1]:.4g}); click a detector for its page."
                f"</figcaption></figure><figure>{verdict_map}<figcaption>Verdicts: green pass, red fail, "
                f"grey not verified.</figcaption></figure></div>{mosaic}</section>"
                f"<section id=\"detectors\"><h2>Detectors</h2>{detectors}</section>"
                f"<section id=\"exposures\"><h2>Exposures</h2>{exposures}</section>")
        _page(self.output / "index.html", f"Flat {summary.instrument} {summary.physical_filter}", body, 0)

    def mosaic(self) -> str:
        content = self.content
        try:
            geometry = mosaic_geometry(content.camera, content.binning)
            image = make_mosaic({i: d.binned for i, d in content.detectors.items()}, geometry)
        except ValueError as error:  # a camera whose detectors cannot be mosaicked
            return f"<p>No mosaic: {html.escape(str(error))}</p>"
        save_array(image, self.output / "img" / "mosaic.png", self.flat_limits)
        return _image("img/mosaic.png", "flat mosaic",
                      f"The flat binned by {content.binning} and mosaicked on the focal plane (x to the "
                      f"right, y up; colour scale {self.flat_limits[0]:.4g} to {self.flat_limits[1]:.4g}); "
                      "click to zoom.")

    def n_flagged(self, detector: int | None = None, exposure: int | None = None) -> int:
        rows = self.content.flagged(detector=detector, exposure=exposure)
        return 0 if rows is None else len(rows)

    def normalization(self) -> None:
        table = self.content.scale_table
        if table is None:
            _page(self.output / "normalization.html", "Normalization",
                  "<p>No normalization (cpFlatNormalizeScaleTable) in these collections.</p>", 0)
            return
        img = self.output / "img"
        exposures = list(self.content.exposures.values())
        first = {int(row["exposure"]): row for row in table}
        flagged = {int(e) for e in table["exposure"][table["flag"] != "USED"]}
        save_exposure_scales([e.minutes for e in exposures], [e.exposure_time for e in exposures],
                             [first[e.id]["exp_scale"] for e in exposures],
                             [first[e.id]["exp_scale_err"] for e in exposures],
                             [e.id in flagged for e in exposures], img / "exposure_scales.png")
        level = table_level(table)
        scales: Mapping[int, float] | Mapping[tuple[int, str], float]
        if level == "AMP":
            scales = {(int(r["detector"]), str(r["amplifier"])): float(r["det_scale"]) for r in table}
        else:
            scales = {int(r["detector"]): float(r["det_scale"]) for r in table}
        plot_focal_plane(self.content.camera, scales, img / "detector_scales.png", f"{level} scales G")
        residuals, rows, exposure_ids, rejected, invalid = residual_matrix(table)
        labels = [str(row) if isinstance(row, int) else f"{row[0]} {row[1]}" for row in rows]
        plot_residual_matrix(residuals, labels, [str(e) for e in exposure_ids], rejected, invalid,
                             img / "residual_matrix.png")
        used = np.asarray(table["log_residual"][table["flag"] == "USED"], dtype=float)
        fit = _table(["item", "value"], [
            ("level", level), ("entries", len(table)),
            *((f"{flag.lower()} entries", int(np.sum(table["flag"] == flag)))
              for flag in ("USED", "REJECTED", "INVALID")),
            ("rms log residual of the used entries",
             float(np.sqrt(np.mean(used**2))) if used.size else math.nan),
        ], "fit")
        colour = self.colour_terms()
        body = ("<section><h2>Fit</h2>" + fit + "</section><section><h2>Exposure scales</h2>"
                + _image("img/exposure_scales.png", "exposure scales against time",
                         "Exposure scale E per second of exposure against time, with its uncertainty.")
                + "</section><section><h2>Detector scales</h2>"
                + _image("img/detector_scales.png", "detector scales",
                         "Scale G of each row on the focal plane.")
                + "</section><section><h2>Residual matrix</h2>"
                + _image("img/residual_matrix.png", "residual matrix",
                         "log(level / (G E)) of each entry: rejected entries crossed, invalid ones ringed.")
                + f"</section><section id=\"colour\"><h2>Colour terms</h2>{colour}</section>")
        _page(self.output / "normalization.html", "Normalization", body, 0)

    def colour_terms(self) -> str:
        table = self.content.scale_table
        assert table is not None
        columns = sorted(name for name in table.colnames if name.startswith("colour_v_"))
        if not columns:
            return "<p>No colour term fitted.</p>"
        first = {int(row["exposure"]): row for row in table}
        return _table(["exposure", *columns],
                      [(e, *(float(first[e][c]) for c in columns)) for e in sorted(first)],
                      "colour-table")

    def gradients(self) -> None:
        gradient = self.content.gradient
        if gradient is None:
            _page(self.output / "gradients.html", "Gradients",
                  "<p>No gradient (flat_gradient) fitted in these collections.</p>", 0)
            return
        save_radial_function(gradient, self.output / "img" / "radial_function.png")
        model = _table(["parameter", "value", "uncertainty"], [
            (name, float(getattr(gradient, name)), float(getattr(gradient.uncertainties, name)))
            for name in ("gradient_x", "gradient_y", "centroid_delta_x", "centroid_delta_y", "itl_ratio")
        ] + [("normalization_factor", float(gradient.normalization_factor), math.nan)], "gradient-table")
        figures = ""
        for name, data in self.content.gradient_figures.items():
            (self.output / "img" / f"{name}.png").write_bytes(data)
            figures += _image(f"img/{name}.png", name, f"The fit's QA figure {name}.")
        body = (f"<section><h2>Model</h2>{model}</section><section><h2>Radial function</h2>"
                + _image("img/radial_function.png", "radial function",
                         "The fitted radial function and its nodes.")
                + f"</section><section><h2>QA figures</h2>{figures or '<p>None written.</p>'}</section>")
        _page(self.output / "gradients.html", "Gradients", body, 0)

    def detector(self, d: DetectorContent) -> None:
        det_id = d.detector.getId()
        img = self.output / "img"
        save_array(d.binned, img / f"flat_{det_id:03d}.png", self.flat_limits)
        amps = _table(["amplifier", "mean level", "pixel scatter", "usable pixels"],
                      [(html.escape(a.name), a.level, a.noise, a.n_pixels) for a in d.amplifiers],
                      "amp-table")
        masked = _table(["mask plane", "pixels"], [(html.escape(k), v) for k, v in d.masked.items()],
                        "mask-table")
        flagged = self.content.flagged(detector=det_id)
        flags = ("<p>No normalization.</p>" if flagged is None else _table(
            ["exposure", "amplifier", "flag", "log residual"],
            [(_link(f"../{_exposure_page(int(r['exposure']))}", str(r["exposure"])),
              html.escape(str(r["amplifier"])),
              str(r["flag"]), float(r["log_residual"])) for r in flagged], "flag-table"))
        residuals = self.residual_tiles(d)
        if d.change is None:
            change = "<p>No previous flat given.</p>"
        else:
            save_array(d.change, img / f"change_{det_id:03d}.png", self.change_limits, "coolwarm")
            change = _image(f"../img/change_{det_id:03d}.png", "change against the previous flat",
                            f"flat / previous - 1 ({html.escape(self.content.previous or '')}), colour scale "
                            f"{self.change_limits[0]:.3g} to {self.change_limits[1]:.3g}.")
        body = (f"<p>{html.escape(d.detector.getName())}, {d.detector.type}, {d.detector.physical_type}; "
                f"verdict: {self.verdict_text(det_id)}.</p><section><h2>Binned flat</h2>"
                + _image(f"../img/flat_{det_id:03d}.png", "binned flat",
                         f"Binned by {self.content.binning}; colour scale {self.flat_limits[0]:.4g} to "
                         f"{self.flat_limits[1]:.4g} (all detectors); click to zoom.")
                + f"</section><section><h2>Amplifiers</h2>{amps}<h3>Masked pixels</h3>{masked}</section>"
                f"<section><h2>Flagged entries</h2>{flags}</section>"
                f"<section><h2>Input residuals</h2>{residuals}</section>"
                f"<section><h2>Change against the previous flat</h2>{change}</section>")
        _page(self.output / _detector_page(det_id), f"Detector {det_id}", body, 1)

    def residual_tiles(self, d: DetectorContent) -> str:
        if not d.residuals:
            return "<p>No input read.</p>"
        det_id = d.detector.getId()
        order = list(d.residuals)
        columns = min(_TILE_COLUMNS, len(order))
        save_array(tiles([d.residuals[e] for e in order], columns),
                   self.output / "img" / f"residuals_{det_id:03d}.png", self.residual_limits, "coolwarm")
        names = ", ".join(_link(f"../{_exposure_page(e)}", str(e)) for e in order)
        return _image(f"../img/residuals_{det_id:03d}.png", "input residuals",
                      f"input / (E x flat) - 1 of each input, binned, {columns} to a row from the top "
                      f"left, in this order: {names}; colour scale {self.residual_limits[0]:.3g} to "
                      f"{self.residual_limits[1]:.3g}.")

    def exposure(self, exposure: int) -> None:
        e = self.content.exposures[exposure]
        table = self.content.scale_table
        assert table is not None
        rows = table[table["exposure"] == exposure]
        entries = _table(["detector", "amplifier", "level", "log residual", "flag"], [
            (_link(f"../{_detector_page(int(r['detector']))}", str(r["detector"])),
             html.escape(str(r["amplifier"])),
             float(r["level"]), float(r["log_residual"]), str(r["flag"])) for r in rows], "entry-table")
        reasons = sorted({str(f) for f in rows["flag"] if f != "USED"})
        why = ("<p>No entry flagged.</p>" if not reasons else
               "<ul>" + "".join(f"<li>{sum(rows['flag'] == f)} entries {_FLAG_REASONS.get(f, f)}</li>"
                                for f in reasons) + "</ul>")
        row = rows[0]
        body = (f"<p>{html.escape(e.obs_id)}, started {e.start} UTC, {e.exposure_time:g} s, "
                f"{html.escape(e.reason)}.</p><p class=\"scale\">Exposure scale E = {row['exp_scale']:.6g} "
                f"± {row['exp_scale_err']:.2g}</p><section><h2>Why flagged</h2>{why}</section>"
                f"<section><h2>Detector residuals</h2>{entries}</section>")
        _page(self.output / _exposure_page(exposure), f"Exposure {exposure}", body, 1)


def write_site(content: ReportContent, output: str | Path) -> Path:
    """Write the report's pages into ``output`` (created if needed); return the path of its index."""
    return _SiteWriter(content, Path(output)).write()
