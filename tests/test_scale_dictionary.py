# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the cpFlatNormalizeScales dictionary: written by build_scale_dictionary, read back."""

import json
import unittest

import numpy as np
import yaml

import lsst.utils.tests
from lsst.cp.flatnorm.formatters import block_yaml
from lsst.cp.flatnorm.scale_dictionary import (
    NO_VALID_ENTRY,
    ScaleDictionaryError,
    build_scale_dictionary,
    check_exposure_scales,
    exposure_scales,
    has_exposure_scales,
    row_flags,
    row_scales,
    scale_level,
    usable_exposure_scale,
)

EXPOSURES = [2026112500010, 2026112500011, 2026112500012]
E = [1000.0, 1300.0, 900.0]
AMP_NAMES = {0: ["C00", "C01"], 3: ["C10"]}


def detector_level(omit=None):
    """Two detectors (0 with two amplifiers, 3 with one), one row each."""
    return build_scale_dictionary(
        "DETECTOR", exposures=EXPOSURES, row_detectors=[0, 3], row_amplifiers=["", ""], e_values=E,
        g_values=[0.9, 1.1], amp_names=AMP_NAMES, omit=omit,
    )


def amp_level(omit=None):
    """The same detectors, one row per amplifier."""
    return build_scale_dictionary(
        "AMP", exposures=EXPOSURES, row_detectors=[0, 0, 3], row_amplifiers=["C00", "C01", "C10"],
        e_values=E, g_values=[0.95, 0.85, 1.2], amp_names=AMP_NAMES, omit=omit,
    )


def json_round_trip(scales):
    """The scales with every key turned into a string, as JSON storage returns them."""
    return json.loads(json.dumps(scales))


class WriterTestCase(lsst.utils.tests.TestCase):
    def test_detector_level_layout(self):
        every_exposure = dict(zip(EXPOSURES, E))
        self.assertEqual(detector_level(), {
            "expScale": {0: {"C00": every_exposure, "C01": every_exposure}, 3: {"C10": every_exposure}},
            "detScale": {0: 0.9, 3: 1.1},
        })

    def test_amp_level_layout(self):
        scales = amp_level()
        self.assertEqual(scales["detScale"], {0: {"C00": 0.95, "C01": 0.85}, 3: {"C10": 1.2}})
        self.assertEqual(scales["expScale"], detector_level()["expScale"])

    def test_plain_types_for_the_yaml_writer(self):
        scales = build_scale_dictionary(
            "AMP", exposures=np.array(EXPOSURES), row_detectors=np.array([0, 0, 3]),
            row_amplifiers=np.array(["C00", "C01", "C10"]), e_values=np.array(E),
            g_values=np.array([0.95, 0.85, np.nan]), amp_names=AMP_NAMES,
        )
        self.assertTrue(all(type(detector) is int for detector in scales["expScale"]))
        self.assertTrue(all(type(exposure) is int and type(e) is float
                            for exposure, e in scales["expScale"][3]["C10"].items()))
        self.assertTrue(all(type(amp) is str and type(g) is float
                            for amp, g in scales["detScale"][0].items()))
        text = block_yaml(scales)
        self.assertIsNotNone(text)  # the fast writer takes it: no numpy scalar, no shared dictionary
        copy = yaml.safe_load(text)
        self.assertTrue(np.isnan(copy["detScale"][3]["C10"]))
        self.assertEqual(copy["expScale"], scales["expScale"])

    def test_omitted_detector_row_leaves_every_amplifier_of_its_detector(self):
        omit = np.zeros((2, 3), dtype=bool)
        omit[0, 1] = True
        exp_scale = detector_level(omit)["expScale"]
        for amp in ("C00", "C01"):
            self.assertEqual(exp_scale[0][amp], {EXPOSURES[0]: E[0], EXPOSURES[2]: E[2]})
        self.assertEqual(exp_scale[3]["C10"], dict(zip(EXPOSURES, E)))

    def test_omitted_amp_row_leaves_only_its_amplifier(self):
        omit = np.zeros((3, 3), dtype=bool)
        omit[1, :] = True
        omit[2, 0] = True
        exp_scale = amp_level(omit)["expScale"]
        self.assertEqual(exp_scale[0]["C00"], dict(zip(EXPOSURES, E)))
        self.assertEqual(exp_scale[0]["C01"], {})
        self.assertEqual(list(exp_scale[3]["C10"]), EXPOSURES[1:])

    def test_inconsistent_arguments(self):
        with self.assertRaisesRegex(ValueError, "Unknown scaling level 'CHIP'"):
            build_scale_dictionary("CHIP", exposures=[], row_detectors=[], row_amplifiers=[], e_values=[],
                                   g_values=[], amp_names={})
        with self.assertRaisesRegex(ValueError, "3 exposures but 2 exposure scales"):
            build_scale_dictionary("DETECTOR", exposures=EXPOSURES, row_detectors=[0], row_amplifiers=[""],
                                   e_values=E[:2], g_values=[1.0], amp_names=AMP_NAMES)
        with self.assertRaisesRegex(ValueError, "2 row detectors, 2 row amplifiers and 1 row scales"):
            build_scale_dictionary("DETECTOR", exposures=EXPOSURES, row_detectors=[0, 3],
                                   row_amplifiers=["", ""], e_values=E, g_values=[1.0], amp_names=AMP_NAMES)
        with self.assertRaisesRegex(ValueError, r"shape \(3, 2\); expected \(2, 3\)"):
            detector_level(np.zeros((3, 2), dtype=bool))
        with self.assertRaisesRegex(ValueError, r"shape \(2, 2\); expected \(2, 3\)"):
            build_scale_dictionary("DETECTOR", exposures=EXPOSURES, row_detectors=[0, 3],
                                   row_amplifiers=["", ""], e_values=E, g_values=[0.9, 1.1],
                                   amp_names=AMP_NAMES, entry_factors=np.ones((2, 2)))

    def test_entry_factors_scale_each_rows_entries(self):
        """Colour terms: the scale under a row's amplifiers is E times that row's factor."""
        factors = np.array([[1.01, 0.99, 1.0], [0.98, 1.02, 1.03]])
        scales = build_scale_dictionary(
            "DETECTOR", exposures=EXPOSURES, row_detectors=[0, 3], row_amplifiers=["", ""], e_values=E,
            g_values=[0.9, 1.1], amp_names=AMP_NAMES, entry_factors=factors,
            omit=np.array([[False, True, False], [False, False, False]]))
        self.assertEqual(scales["expScale"][0]["C00"], {EXPOSURES[0]: E[0] * 1.01, EXPOSURES[2]: E[2] * 1.0})
        self.assertEqual(scales["expScale"][0]["C01"], scales["expScale"][0]["C00"])
        self.assertIsNot(scales["expScale"][0]["C01"], scales["expScale"][0]["C00"])
        self.assertEqual(scales["expScale"][3]["C10"],
                         {e: s * f for e, s, f in zip(EXPOSURES, E, factors[1])})
        self.assertTrue(all(type(v) is float for v in scales["expScale"][3]["C10"].values()))
        amp = build_scale_dictionary(
            "AMP", exposures=EXPOSURES, row_detectors=[0, 0, 3], row_amplifiers=["C00", "C01", "C10"],
            e_values=E, g_values=[0.95, 0.85, 1.2], amp_names=AMP_NAMES,
            entry_factors=np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [0.5, 0.5, 0.5]]))
        self.assertEqual(amp["expScale"][0]["C00"], dict(zip(EXPOSURES, E)))
        self.assertEqual(amp["expScale"][0]["C01"], {e: 2.0 * s for e, s in zip(EXPOSURES, E)})
        self.assertEqual(amp["expScale"][3]["C10"], {e: 0.5 * s for e, s in zip(EXPOSURES, E)})


class ReaderTestCase(lsst.utils.tests.TestCase):
    def test_level(self):
        self.assertEqual(scale_level(detector_level()), "DETECTOR")
        self.assertEqual(scale_level(amp_level()), "AMP")
        with self.assertRaisesRegex(ValueError, "no detScale entry"):
            scale_level({"expScale": {}, "detScale": {}})

    def test_round_trip_with_int_and_str_keys(self):
        for scales in (detector_level(), json_round_trip(detector_level())):
            with self.subTest(key_type=type(next(iter(scales["detScale"]))).__name__):
                self.assertEqual(exposure_scales(scales), dict(zip(EXPOSURES, E)))
                self.assertEqual(row_scales(scales), {0: 0.9, 3: 1.1})
                self.assertEqual(usable_exposure_scale(scales, 3, "C10", EXPOSURES[1]), 1300.0)
                self.assertTrue(has_exposure_scales(scales, 0))
                self.assertFalse(has_exposure_scales(scales, 1))
        for scales in (amp_level(), json_round_trip(amp_level())):
            with self.subTest(level="AMP", key_type=type(next(iter(scales["detScale"]))).__name__):
                self.assertEqual(row_scales(scales), {(0, "C00"): 0.95, (0, "C01"): 0.85, (3, "C10"): 1.2})
                self.assertEqual(usable_exposure_scale(scales, 0, "C01", EXPOSURES[2]), 900.0)

    def test_omitted_entries_read_as_absent(self):
        omit = np.zeros((3, 3), dtype=bool)
        omit[0, 0] = True
        scales = amp_level(omit)
        self.assertIsNone(usable_exposure_scale(scales, 0, "C00", EXPOSURES[0]))
        self.assertEqual(usable_exposure_scale(scales, 0, "C01", EXPOSURES[0]), 1000.0)
        every_row = np.ones((3, 3), dtype=bool)
        every_row[2, 0] = False
        self.assertEqual(exposure_scales(amp_level(every_row)), {EXPOSURES[0]: 1000.0})

    def test_empty_detector_entry_is_present(self):
        scales = detector_level(np.ones((2, 3), dtype=bool))
        self.assertEqual(scales["expScale"][0], {"C00": {}, "C01": {}})
        self.assertTrue(has_exposure_scales(scales, 0))
        self.assertEqual(exposure_scales(scales), {})

    def test_only_finite_positive_scales_are_usable(self):
        scales = {"expScale": {0: {"C00": {1: float("nan"), 2: 0.0, 3: -5.0, 4: float("inf"), 5: None,
                                           6: 12}}},
                  "detScale": {0: 1.0}}
        for exposure in (1, 2, 3, 4, 5, 7):
            with self.subTest(exposure=exposure):
                self.assertIsNone(usable_exposure_scale(scales, 0, "C00", exposure))
        self.assertEqual(usable_exposure_scale(scales, 0, "C00", 6), 12.0)
        self.assertIsInstance(usable_exposure_scale(scales, 0, "C00", 6), float)
        self.assertIsNone(usable_exposure_scale(scales, 0, "C99", 6))
        self.assertIsNone(usable_exposure_scale(scales, 1, "C00", 6))


def cp_pipe_reader(scales, detector, amp, exposure):
    """How cp_pipe's combine and its other readers use the dictionary: by key, expScale and detScale."""
    return scales["expScale"][detector][amp][exposure], scales["detScale"][detector]


class FlagsTestCase(lsst.utils.tests.TestCase):
    """``flags`` beside ``detScale``: the rows whose NaN scale has a reason, both ways."""

    def test_amp_level_row_without_measurement(self):
        scales = build_scale_dictionary(
            "AMP", exposures=EXPOSURES, row_detectors=[0, 0, 3], row_amplifiers=["C00", "C01", "C10"],
            e_values=E, g_values=[0.95, np.nan, 1.2], amp_names=AMP_NAMES)
        self.assertEqual(list(scales), ["expScale", "detScale", "flags"])
        self.assertEqual(scales["flags"], {0: {"C01": NO_VALID_ENTRY}})
        self.assertEqual(NO_VALID_ENTRY, "NO_VALID_ENTRY")
        for copy in (scales, json_round_trip(scales), yaml.safe_load(block_yaml(scales))):
            self.assertEqual(row_flags(copy), {(0, "C01"): NO_VALID_ENTRY})
            self.assertEqual(scale_level(copy), "AMP")
            self.assertEqual(exposure_scales(copy), dict(zip(EXPOSURES, E)))
            self.assertEqual(set(row_scales(copy)), {(0, "C00"), (0, "C01"), (3, "C10")})

    def test_detector_level_row_without_measurement(self):
        scales = build_scale_dictionary(
            "DETECTOR", exposures=EXPOSURES, row_detectors=[0, 3], row_amplifiers=["", ""], e_values=E,
            g_values=[np.nan, 1.1], amp_names=AMP_NAMES)
        self.assertEqual(scales["flags"], {0: NO_VALID_ENTRY})
        self.assertEqual(row_flags(json_round_trip(scales)), {0: NO_VALID_ENTRY})
        expected, g = cp_pipe_reader(scales, 0, "C01", EXPOSURES[1])  # cp_pipe's readers are unaffected
        self.assertEqual(expected, E[1])
        self.assertTrue(np.isnan(g))
        self.assertEqual(cp_pipe_reader(yaml.safe_load(block_yaml(scales)), 3, "C10", EXPOSURES[2]),
                         (E[2], 1.1))

    def test_no_flags_entry_when_every_row_is_measured(self):
        for scales in (detector_level(), amp_level()):
            self.assertEqual(list(scales), ["expScale", "detScale"])
            self.assertEqual(row_flags(scales), {})


class CheckTestCase(lsst.utils.tests.TestCase):
    def test_missing_exposure_scales_are_named(self):
        source = "cpFlatNormalizeScales {instrument: 'SimFlatCam', physical_filter: 'sim_r'}"
        for scales, message in (
            ({"detScale": {0: 1.0}},
             f"The scales of {source} have no 'expScale' entry (their keys: ['detScale']), so no exposure "
             "can be scaled; they are not the normalization's output."),
            ({"expScale": [1.0]},
             f"The scales of {source} have an 'expScale' entry that is a list, not a dictionary by "
             "detector."),
            ([1.0], f"The scales of {source} are a list, not a dictionary with an 'expScale' entry."),
        ):
            with self.subTest(scales=scales), self.assertRaises(ScaleDictionaryError) as cm:
                check_exposure_scales(scales, source)
            self.assertEqual(str(cm.exception), message)
            self.assertIsInstance(cm.exception, ValueError)
        check_exposure_scales(detector_level(), source)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
