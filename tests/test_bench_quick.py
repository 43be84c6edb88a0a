# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Keep the benchmarks working: run ``bench.run_all --quick`` and check the pieces it relies on.

Benchmarks are not tests, so nothing here asserts a time; accuracy is asserted because it does
not depend on the machine.  The run is ``bench.run_all.main(["--quick"])`` in this process, from the
repository's root, as ``python -m bench.run_all --quick`` (``make bench-quick``) runs it without
the interpreter start-up and imports of a subprocess.
"""

import contextlib
import io
import re
import sys
import unittest
from pathlib import Path

import numpy as np
import pytest

import lsst.utils.tests

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench import run_all  # noqa: E402
from bench.solver import (  # noqa: E402
    baseline_measure_scales,
    max_relative_errors,
    oracle_scales,
    simulate_levels,
)

pytestmark = pytest.mark.slow  # a minute: started first (tests/conftest.py)


class QuickRunTestCase(unittest.TestCase):
    """``python -m bench.run_all --quick`` completes and prints its ratio lines."""

    @classmethod
    def setUpClass(cls):
        out = io.StringIO()
        with contextlib.chdir(REPO_ROOT), contextlib.redirect_stdout(out):
            run_all.main(["--quick"])
        cls.stdout = out.getvalue()

    def test_completes(self):
        # Its last line, printed after every part.
        self.assertRegex(self.stdout, r"\n# process peak resident memory \d+ MiB\n$")

    def test_solver_lines(self):
        for label in ("DETECTOR 27x8", "AMP 96x10"):
            with self.subTest(label=label):
                self.assertRegex(self.stdout, rf"solver {label}: speed ratio \d+\.\dx")
                floor = re.search(rf"solver {label}: error ratio to noise floor E, G: "
                                  r"ours ([\d.]+), ([\d.]+); baseline ([\d.]+), ([\d.]+)",
                                  self.stdout)
                self.assertIsNotNone(floor, self.stdout)
                ours_e, ours_g, baseline_e, baseline_g = map(float, floor.groups())
                # Ours is the exact solution on the entries it keeps, which (with the default
                # rejection) are the undamaged ones; the baseline keeps the outliers.
                self.assertLess(max(ours_e, ours_g), 1.05)
                self.assertGreater(min(baseline_e, baseline_g), 10.0)

    def test_gather_lines(self):
        label = "gather AMP 9x4"
        self.assertRegex(self.stdout, rf"{label}: \(a\) graph .*\(b\) quantum .*\(c\) bare reads")
        self.assertRegex(self.stdout, rf"{label}: quantum / bare reads ratio \d+\.\d\d")
        self.assertRegex(self.stdout, rf"{label}: \(g\) read-only quantum \(middleware floor\) .*"
                                      r"\(g\) / bare reads ratio \d+\.\d\d; the task's own share "
                                      r"\(b - g\) / \(c\) -?\d+%")
        # REPEATS = 3 timings of (b) and of (g), and a read loop before each quantum and after the last.
        self.assertRegex(self.stdout, rf"{label}: every timing: \(b\)( [^;,]+,){{2}} [^;,]+; "
                                      r"\(g\)( [^;,]+,){2} [^;,]+; \(c\)( [^;,]+,){6} [^;,]+\n")
        self.assertRegex(self.stdout, rf"{label}: \(f\) quantum on a quantum-backed butler .*"
                                      r"\(f\) / bare reads ratio \d+\.\d\d")
        peaks = re.search(rf"{label}: peak traced memory: quantum ([\d.]+) MiB, bare reads ([\d.]+) MiB",
                          self.stdout)
        self.assertIsNotNone(peaks, self.stdout)
        self.assertGreater(float(peaks.group(1)), 0.0)

    def test_measure_lines(self):
        label = "measure 512x256"
        self.assertRegex(self.stdout, rf"{label}: per \(exposure, detector\) read .*, compute ")
        self.assertRegex(self.stdout, rf"{label}: speed ratio \d+\.\dx")
        agreement = re.search(rf"{label}: task vs baseline: max relative mean difference (\S+), "
                              r"pixel counts (\w+)", self.stdout)
        self.assertIsNotNone(agreement, self.stdout)
        # Same clipping rule on the same pixels: only summation order may differ.
        self.assertLess(float(agreement.group(1)), 1e-9)
        self.assertEqual(agreement.group(2), "equal")

    def test_colour_lines(self):
        label = "colour AMP 96x10"
        self.assertRegex(self.stdout, rf"{label}: colourTerms=1 .*, colourTerms=0 .*: cost ratio "
                                      r"\d+\.\dx \(solve and uncertainties")
        errors = re.search(rf"{label}: max relative error E, G: colourTerms=0 (\S+), (\S+); "
                           r"colourTerms=1 (\S+), (\S+)\n", self.stdout)
        self.assertIsNotNone(errors, self.stdout)
        separable_e, separable_g, colour_e, colour_g = map(float, errors.groups())
        # The separable model keeps the colour term's bias in G; the colour model removes it.
        self.assertGreater(separable_g, 5 * colour_g)
        self.assertLess(max(colour_e, colour_g), 3e-4)

    def test_report_line(self):
        self.assertRegex(self.stdout, r"report 9 detectors, 144 amplifiers, 6 exposures: site written "
                                      r"in .*, 51 files, \d+\.\d MiB")

    def test_chain_line(self):
        self.assertRegex(self.stdout, r"measure 512x256: chain per \(exposure, detector\): read \+ "
                                      r"measure .*, the combine's share .* \(CpFlatCombineTask.run on "
                                      r"the 2 images")

    def test_clipstats_lines(self):
        label = "clipstats 512x256"
        self.assertRegex(self.stdout, rf"{label}: floor .* \(4 passes x 5 B/pixel; numpy copies at ")
        ours = re.search(rf"{label}: ours .* = [\d.]+x the floor .*max \|mean difference\| / sigma (\S+), "
                         r"counts differ in (\d+) of 17 sets", self.stdout)
        self.assertIsNotNone(ours, self.stdout)
        # Float64-exact: the same kept pixels, means equal to rounding.
        self.assertLess(float(ours.group(1)), 1e-9)
        self.assertEqual(ours.group(2), "0")
        for peer in ("astropy SigmaClip", "astropy sigma_clipped_stats"):
            self.assertRegex(self.stdout, rf"{label}: {peer} .* = [\d.]+x the floor")
        self.assertRegex(self.stdout, rf"{label}: ours / floor [\d.]+x \(goal <= 5x: .*\); astropy "
                                      r".* / ours [\d.]+x \(astropy's fastest; goal >= 2x: ")

    def test_combine_lines(self):
        label = "combine 512x64x12"
        self.assertRegex(self.stdout, rf"{label}: ours .*, memory peak \d+ MiB")
        self.assertRegex(self.stdout, rf"{label}: speed ratio astropy / ours [\d.]+x against "
                                      r"astropy's fastest path, astropy .* \(goal >= 3x: .*\); "
                                      r"memory ours / astropy ")
        self.assertRegex(self.stdout, rf"{label}: ours = [\d.]+x the floor ")
        for n_inputs in (3, 5, 10, 20, 50):
            self.assertRegex(self.stdout, rf"combine sweep 512x64x{n_inputs}: ours .* per input, "
                                          r".* speed ratio [\d.]+x")
        self.assertRegex(self.stdout, rf"{label}: (speed ratio ccdproc / ours|ccdproc skipped: )")
        for n_inputs in (12, 20):
            quality = re.search(rf"combine 512x64x{n_inputs}: quality ours: inputs kept per pixel ([\d.]+) "
                                r"of ([\d.]+) valid, pull rms ([\d.]+), cosmic-ray pixels beyond 5 sigma "
                                r"(\d+)", self.stdout)
            self.assertIsNotNone(quality, self.stdout)
            kept, valid, pull_rms, leaked = map(float, quality.groups())
            # Few good inputs dropped, the Poisson scatter within a few per cent, no cosmic ray left.
            self.assertGreater(kept / valid, 0.99)
            self.assertLess(pull_rms, 1.05)
            self.assertEqual(leaked, 0)

    def test_whole_flat_lines(self):
        label = r"whole flat 189x50 of 512x256"
        out = self.stdout
        self.assertRegex(out, rf"{label}: chain per \(exposure, detector\) read .*, measure .*, "
                              r"combine share .*, normalization share .*: .* = [\d.]+x the floor")
        self.assertRegex(out, rf"{label}: assumptions: 9640 quanta; ")
        for cores in (2, 16, 64):
            self.assertRegex(out, rf"{label}: 1 machine of {cores} cores \(pipetask -j {cores}\): "
                                  r"[\d.]+ (min|h) \(measure ")
        self.assertRegex(out, rf"{label}: bps Slurm on 4 machine\(s\) of 64 cores, .*: [\d.]+ (min|h) ")

    def test_storage_lines(self):
        label = "storage 512x400"
        for storage in ("FITS, GZIP_2, a tile per row", "FITS, uncompressed",
                        "HDF5 \\(NDF\\), uncompressed"):
            self.assertRegex(self.stdout, rf"{label}: {storage}.*: [\d.]+ MiB .* read .* bands of "
                                          r"200 rows")
        # Every read is compared with what was written; the run stops if one differs.
        self.assertRegex(self.stdout, rf"{label}: the package's storage reads a detector in .* "
                                      r"losslessly")


class SolverPartsTestCase(unittest.TestCase):
    """The simulation, baseline, oracle and error measure behave as documented."""

    def setUp(self):
        self.simulated = simulate_levels(400, 30, amp_level=True, seed=3)

    def test_damage_fractions(self):
        levels, counts = self.simulated.levels, self.simulated.counts
        live = self.simulated.live_rows
        self.assertEqual(int((~live).sum()), 1)
        np.testing.assert_array_equal(levels[~live], 0.0)
        missing = counts[live] == 0
        self.assertAlmostEqual(missing.mean(), 0.10, delta=0.01)
        self.assertTrue(np.isnan(levels[live][missing]).all())
        failed = np.isnan(levels[live]) & ~missing
        self.assertAlmostEqual(failed.sum() / (~missing).sum(), 0.01, delta=0.004)
        ratio = levels / np.outer(self.simulated.row_truth, self.simulated.exposure_truth)
        damaged = np.isfinite(ratio) & ~self.simulated.clean & live[:, np.newaxis]
        np.testing.assert_allclose(np.abs(ratio[damaged] - 1.0), 0.25, atol=1e-3)
        self.assertLess(np.max(np.abs(ratio[self.simulated.clean] - 1.0)), 1e-3)

    def test_error_measure_ignores_gauge(self):
        truth_g, truth_e = self.simulated.row_truth, self.simulated.exposure_truth
        self.assertEqual(max_relative_errors(2.0 * truth_g, truth_e / 2.0, self.simulated), (0.0, 0.0))
        exposure_error, row_error = max_relative_errors(truth_g, truth_e * 1.01, self.simulated)
        self.assertAlmostEqual(exposure_error, 0.01, places=12)
        self.assertEqual(row_error, 0.0)

    def test_baseline_exact_on_complete_separable_data(self):
        gains = np.array([0.9, 1.0, 1.2, 1.1])
        lamps = np.array([1000.0, 5000.0, 20000.0])
        counts = np.full((4, 3), 7.0)
        row_scales, exposure_scales = baseline_measure_scales(np.outer(gains, lamps), counts)
        np.testing.assert_allclose(row_scales, gains / gains.mean(), rtol=1e-12)
        np.testing.assert_allclose(exposure_scales, lamps * gains.mean(), rtol=1e-12)

    def test_baseline_skips_dead_row(self):
        row_scales, _ = baseline_measure_scales(self.simulated.levels, self.simulated.counts)
        self.assertTrue(np.isnan(row_scales[~self.simulated.live_rows]).all())
        self.assertTrue(np.isfinite(row_scales[self.simulated.live_rows]).all())

    def test_oracle_near_truth(self):
        exposure_error, row_error = max_relative_errors(*oracle_scales(self.simulated), self.simulated)
        # 1e-4 log noise over ~27 entries per row and ~360 per exposure.
        self.assertLess(row_error, 1e-4)
        self.assertLess(exposure_error, 2e-5)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
