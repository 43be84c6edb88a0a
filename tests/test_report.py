# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat report (``cp-flatnorm report``) of a simulated run: its numbers against the butler and
the simulator's truth, and its pages in headless Chromium (every page loads without a console
error, every image has a size, every local link and anchor resolves, a detector on the focal-plane
map opens its page, tables sort).  The index's screenshot is kept under pytest's base temporary
directory (its path is printed)."""

import collections
import contextlib
import io
import re
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

import numpy as np
import pytest

from lsst.cp.flatnorm.cli import main
from lsst.cp.flatnorm.report import collect_report, write_site
from lsst.cp.flatnorm.report.verification import RUN_RESULTS, read_verdicts
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri
from lsst.cp.flatnorm.verify_results import Verdicts, verdict_table
from lsst.daf.butler import Butler, DatasetType
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from servers import chromium
from worker_cache import built_once

pytestmark = pytest.mark.slow

CAMERA = make_sim_camera(n_side=2, n_wavefront=1, amp_width=8, amp_height=16)
CONFIG = FlatSimConfig(n_exposures=4, dead_amplifier=(3, "C03"), shadow=(2, 1), saturation=None,
                       missing_images=((1, 2),))
OUTPUT = "u/test/cpFlat"
VERIFY = "u/test/verify"
PREVIOUS = "u/test/previousFlat"
FAILING = 1
"""The detector the simulated verification fails."""
PREVIOUS_FACTOR = 1.01
"""The previous flat is this flat times this factor."""


@pytest.fixture(scope="module")
@built_once
def run(tmp_path_factory):
    """A simulated repository, the SimFlatCam pipeline run in-process, a verification that fails one
    detector, a previous flat, and the report of it all."""
    root = tmp_path_factory.mktemp("report")
    repo = build_sim_repo(root / "repo", camera=CAMERA, config=CONFIG)
    butler = SimplePipelineExecutor.prep_butler(str(repo.root), inputs=[repo.defaults_collection],
                                                output=OUTPUT)
    SimplePipelineExecutor.from_pipeline_filename(pipeline_uri("SimFlatCam", "cpFlat.yaml"),
                                                  butler=butler).run(register_dataset_types=True)
    butler = Butler.from_config(str(repo.root), writeable=True)
    data_id = {"instrument": "SimFlatCam", "physical_filter": CONFIG.physical_filter}
    # The verdicts as the verification writes them (its layout module's table; the verification's
    # own tests run it): one detector failed.
    results = DatasetType(RUN_RESULTS, ("instrument", "physical_filter"), "ArrowAstropy",
                          universe=butler.dimensions)
    butler.registry.registerDatasetType(results)
    butler.collections.register(VERIFY)
    butler.collections.register(PREVIOUS)
    verdicts = Verdicts.from_failures(
        {det.getId(): ["C00 AMP_OFFSET"] if det.getId() == FAILING else [] for det in CAMERA}, {})
    butler.put(verdict_table(verdicts), results, run=VERIFY, **data_id)
    for det in CAMERA:
        flat = butler.get("flat", detector=det.getId(), collections=OUTPUT, **data_id)
        flat.image.array[...] *= PREVIOUS_FACTOR
        butler.put(flat, "flat", detector=det.getId(), run=PREVIOUS, **data_id)
    content = collect_report(butler, [VERIFY, OUTPUT], previous=PREVIOUS)
    index = write_site(content, root / "site")
    return repo, butler, content, index


def flat(butler, detector):
    return butler.get("flat", detector=detector, instrument="SimFlatCam",
                      physical_filter=CONFIG.physical_filter, collections=OUTPUT)


def test_report_numbers_match_the_butler_and_the_truth(run):
    repo, butler, content, _ = run
    assert content.summary.instrument == "SimFlatCam"
    assert content.summary.flat_dataset_type == "flat"
    assert content.summary.labels == ["cpFlatCombine", "cpFlatMeasure", "cpFlatNormalize"]
    assert set(content.exposures) == {e.id for e in repo.truth.exposures}
    assert [round(e.minutes, 6) for e in content.exposures.values()] == sorted(
        round(e.minutes, 6) for e in content.exposures.values())
    # The flagged entries are the simulated shadow, nothing else.
    flagged = content.flagged()
    assert {(int(r["exposure"]), int(r["detector"])) for r in flagged} == repo.truth.expected_rejected()
    assert set(flagged["flag"]) == {"REJECTED"}
    for det in CAMERA:
        detector = content.detectors[det.getId()]
        image = flat(butler, det.getId()).image.array.astype(np.float64)
        assert detector.median == pytest.approx(float(np.median(image)), rel=1e-12)
        for amp, level in zip(det, detector.amplifiers):
            box = amp.getBBox()
            pixels = image[box.getMinY():box.getMaxY() + 1, box.getMinX():box.getMaxX() + 1]
            assert (level.name, level.n_pixels) == (amp.getName(), pixels.size)
            assert level.level == pytest.approx(pixels.mean(), rel=1e-9)
            assert level.noise == pytest.approx(pixels.std(), rel=1e-9)
        # The previous flat was this one times 1.01 (0 / 0 where the flat is 0: the dead amplifier;
        # a bin is a pixel here).
        assert content.binning == 1
        finite = np.isfinite(detector.change)
        np.testing.assert_array_equal(finite, image > 0)
        np.testing.assert_allclose(detector.change[finite], 1 / PREVIOUS_FACTOR - 1, rtol=1e-5)
        # One residual per input image (detector 2 was not read out in the second exposure).
        expected_inputs = {e.id for e in repo.truth.exposures} - {
            e for e, d in repo.truth.missing_images() if d == det.getId()}
        assert set(detector.residuals) == expected_inputs
    # The shadowed input stands out of its detector's residuals (on average; single pixels, cosmic
    # rays and the filled ones, stray further); the others are within a per cent or so.
    exposure, detector = next(iter(repo.truth.expected_rejected()))
    means = {e: np.nanmean(r) for e, r in content.detectors[detector].residuals.items()}
    assert means.pop(exposure) < -0.1
    assert all(abs(mean) < 0.02 for mean in means.values())
    assert content.verdicts == {det.getId(): det.getId() != FAILING for det in CAMERA}


def test_not_verified_without_results(run):
    _, butler, _, _ = run
    assert read_verdicts(butler, [OUTPUT], "SimFlatCam") is None


def test_command_line(run, tmp_path, capsys):
    repo, _, _, _ = run
    status = main(["report", str(repo.root), "--collections", f"{OUTPUT}", "-o", str(tmp_path / "site"),
                   "--no-input-residuals"])
    printed = capsys.readouterr().out
    assert status == 0
    assert printed.strip().endswith(str(tmp_path / "site" / "index.html"))
    index = (tmp_path / "site" / "index.html").read_text()
    assert "Not verified" in index
    assert "No input read." in (tmp_path / "site" / "detectors" / "det_000.html").read_text()
    with contextlib.redirect_stderr(io.StringIO()) as errors:
        status = main(["report", str(repo.root), "--collections", "u/nobody", "-o", str(tmp_path / "none")])
    assert status == 1
    assert "No collection with name 'u/nobody' found" in errors.getvalue()


def test_pages_name_what_they_show(run):
    repo, _, content, index = run
    site = index.parent
    text = index.read_text()
    assert f"{len(CAMERA) - 1} detectors pass, 1 fail, 0 not verified." in text
    exposure, detector = next(iter(repo.truth.expected_rejected()))
    page = (site / "exposures" / f"exp_{exposure}.html").read_text()
    assert "1 entries rejected: its level strays from the separable model" in page
    row = content.scale_table[(content.scale_table["exposure"] == exposure)][0]
    assert f"{row['exp_scale']:.6g}" in page
    assert "No gradient (flat_gradient) fitted" in (site / "gradients.html").read_text()
    normalization = (site / "normalization.html").read_text()
    assert "No colour term fitted." in normalization
    # The fit's summary, from the table read back (its metadata does not survive the butler).
    n_entries = len(CAMERA) * CONFIG.n_exposures - len(repo.truth.missing_images())
    assert f'<td>entries</td><td data-value="{n_entries}">' in normalization
    assert '<td>rejected entries</td><td data-value="1">1</td>' in normalization
    assert "<td>level</td><td>DETECTOR</td>" in normalization


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    reason = chromium.require()
    if reason is not None:
        pytest.skip(reason)
    driver = chromium.start(tmp_path_factory.mktemp("chromium-profile"))
    yield driver
    driver.quit()


def _local_links(driver):
    """Every link of the page, resolved against it (SVG links included)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('a[href]'), a => "
        "new URL(a.getAttribute('href'), document.baseURI).href);")


def test_every_page_in_chromium(run, browser):
    """Crawl the site from its index: each page loads without a console error, each image has a
    size, each link reaches a page of the site and each anchor an element of its page."""
    _, _, content, index = run
    site = index.parent.resolve()
    queue, seen, anchors, n_images = collections.deque([index.resolve().as_uri()]), set(), [], 0
    while queue:
        url = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        browser.get(url)
        errors = [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == [], url
        sizes = browser.execute_script(
            "return Array.from(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth]);")
        n_images += len(sizes)
        for source, complete, width in sizes:
            assert complete and width > 0, (url, source)
        for link in _local_links(browser):
            target, fragment = urldefrag(link)
            path = Path(unquote(urlparse(target).path))
            assert urlparse(target).scheme == "file" and path.is_relative_to(site), (url, link)
            assert path.is_file(), (url, link)
            if fragment:
                anchors.append((target, fragment))
            queue.append(target)
    n_pages = 3 + len(content.detectors) + len(content.exposures)
    assert len(seen) == n_pages
    # The index's mosaic; the normalization's three figures; per detector, flat, residuals, change.
    assert n_images == 1 + 3 + 3 * len(content.detectors)
    for target, fragment in anchors:
        browser.get(target)
        assert browser.execute_script("return document.getElementById(arguments[0]) !== null;", fragment), \
            (target, fragment)


def test_map_click_and_table_sort_in_chromium(run, browser, tmp_path_factory):
    _, _, content, index = run
    browser.get(index.resolve().as_uri())
    screenshot = tmp_path_factory.getbasetemp() / "report_index.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot of the report's index: {screenshot}")
    assert screenshot.read_bytes()[:4] == b"\x89PNG"
    # Sort the detector table by median, then the other way.
    table = browser.find_element("id", "detector-table")
    header = table.find_elements("css selector", "thead th")[3]
    assert header.text == "median"
    medians = [d.median for d in content.detectors.values()]

    def column():
        return [float(cell.get_attribute("data-value"))
                for cell in table.find_elements("css selector", "tbody tr td:nth-child(4)")]

    assert column() != sorted(medians)  # in detector order before
    header.click()
    assert column() == sorted(medians)
    assert header.get_attribute("aria-sort") == "ascending"
    header.click()
    assert column() == sorted(medians, reverse=True)
    # A detector on the flat's focal-plane map opens its page.
    browser.find_element("css selector", f'#flat-map a[data-detector="{FAILING}"] polygon').click()
    assert browser.current_url.endswith(f"detectors/det_{FAILING:03d}.html")
    assert browser.find_element("tag name", "h1").text == f"Detector {FAILING}"
    assert re.search("verdict: FAIL", browser.page_source)
    # An image zooms when clicked.
    image = browser.find_element("css selector", "img.zoomable")
    width = image.size["width"]
    image.click()
    assert image.size["width"] == 2 * width
