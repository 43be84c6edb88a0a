# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of the flat statistics keys: written by pack_statistics, read by gather_statistics."""

import unittest

import numpy as np

import lsst.utils.tests
from lsst.cp.flatnorm.flat_statistics import (
    DETECTOR_KEYS,
    AmpKeys,
    RegionKeys,
    amp_keys,
    gather_statistics,
    pack_statistics,
)
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.pipe.base import TaskMetadata

EXPOSURES = [2026112500010, 2026112500011]


class KeysTestCase(lsst.utils.tests.TestCase):
    def test_cp_pipe_key_names(self):
        self.assertEqual(DETECTOR_KEYS, RegionKeys(median="DETECTOR_MEDIAN", sigma="DETECTOR_SIGMA",
                                                   n="DETECTOR_N"))
        self.assertIsNone(DETECTOR_KEYS.name)
        self.assertEqual(amp_keys(12), AmpKeys(median="AMP_MEDIAN_12", sigma="AMP_SIGMA_12",
                                               n="AMP_N_12", name="AMP_NAME_12"))

    def test_pack_writes_every_key_as_a_plain_value(self):
        md = pack_statistics(median=np.float64(1000.5), sigma=np.float32(3.25), n=np.int64(4000),
                             amp_names=np.array(["C00", "C01"]), amp_medians=np.array([990.0, np.nan]),
                             amp_sigmas=np.array([3.0, np.nan]), amp_ns=np.array([2000, 0]))
        self.assertIsInstance(md, TaskMetadata)
        self.assertEqual(sorted(md.names()), sorted([
            "DETECTOR_MEDIAN", "DETECTOR_SIGMA", "DETECTOR_N",
            "AMP_NAME_0", "AMP_MEDIAN_0", "AMP_SIGMA_0", "AMP_N_0",
            "AMP_NAME_1", "AMP_MEDIAN_1", "AMP_SIGMA_1", "AMP_N_1",
        ]))
        self.assertEqual((md["DETECTOR_MEDIAN"], md["DETECTOR_SIGMA"], md["DETECTOR_N"]),
                         (1000.5, 3.25, 4000))
        self.assertEqual((md["AMP_NAME_0"], md["AMP_MEDIAN_0"], md["AMP_SIGMA_0"], md["AMP_N_0"]),
                         ("C00", 990.0, 3.0, 2000))
        self.assertEqual(md["AMP_NAME_1"], "C01")
        self.assertTrue(np.isnan(md["AMP_MEDIAN_1"]) and np.isnan(md["AMP_SIGMA_1"]))
        self.assertEqual(md["AMP_N_1"], 0)
        self.assertEqual([type(md[key]) for key in ("DETECTOR_MEDIAN", "DETECTOR_N", "AMP_NAME_0")],
                         [float, int, str])

    def test_pack_refuses_amplifier_lists_of_different_lengths(self):
        with self.assertRaisesRegex(ValueError, "2 amplifier names, 1 medians, 2 sigmas and 2 counts"):
            pack_statistics(median=1.0, sigma=0.0, n=1, amp_names=["C00", "C01"], amp_medians=[1.0],
                            amp_sigmas=[0.0, 0.0], amp_ns=[1, 1])


class RoundTripTestCase(lsst.utils.tests.TestCase):
    """pack_statistics -> gather_statistics returns the packed levels and counts."""

    def setUp(self):
        self.camera = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)
        rng = np.random.default_rng(3)
        self.packed = {}
        for exposure in EXPOSURES:
            for detector in self.camera:
                names = [amp.getName() for amp in detector][::-1]  # not the camera's order
                self.packed[exposure, detector.getId()] = (
                    names, rng.uniform(900.0, 1100.0, len(names)), rng.integers(10, 17, len(names)))

    def inputs(self):
        mds, dims = [], []
        for (exposure, detector), (names, levels, counts) in self.packed.items():
            mds.append(pack_statistics(median=levels.mean(), sigma=1.0, n=counts.sum(), amp_names=names,
                                       amp_medians=levels, amp_sigmas=np.ones(len(names)), amp_ns=counts))
            dims.append({"exposure": exposure, "detector": detector})
        return mds, dims

    def test_detector_level(self):
        matrix = gather_statistics(*self.inputs(), self.camera, "DETECTOR")
        self.assertEqual(matrix.exposures, EXPOSURES)
        for (exposure, detector), (_, levels, counts) in self.packed.items():
            i, j = matrix.detectors.index(detector), matrix.exposures.index(exposure)
            self.assertEqual((matrix.levels[i, j], matrix.counts[i, j]), (levels.mean(), counts.sum()))

    def test_amp_level(self):
        matrix = gather_statistics(*self.inputs(), self.camera, "AMP")
        rows = list(zip(matrix.detectors, matrix.amplifiers))
        self.assertEqual(len(rows), 16 + 8)
        self.assertTrue(matrix.present.all())
        for (exposure, detector), (names, levels, counts) in self.packed.items():
            j = matrix.exposures.index(exposure)
            for name, level, count in zip(names, levels, counts):
                i = rows.index((detector, name))
                self.assertEqual((matrix.levels[i, j], matrix.counts[i, j]), (level, count))


class BadValuesTestCase(lsst.utils.tests.TestCase):
    """Values that are not numbers, and amplifier keys the camera does not have, are refused with the
    key, the value and the data ID; nothing is read as a number it is not."""

    def setUp(self):
        self.camera = make_sim_camera(n_side=1, amp_width=4, amp_height=4, n_wavefront=1)
        self.mds, self.dims = [], []
        for exposure in EXPOSURES:
            for detector in self.camera:
                names = [amp.getName() for amp in detector]
                self.mds.append(pack_statistics(median=1000.0, sigma=1.0, n=16 * len(names), amp_names=names,
                                                amp_medians=[1000.0] * len(names),
                                                amp_sigmas=[1.0] * len(names), amp_ns=[16] * len(names)))
                self.dims.append({"instrument": "SimFlatCam", "exposure": exposure,
                                  "detector": detector.getId()})
        self.where = f"{{instrument=SimFlatCam, exposure={EXPOSURES[1]}, detector=1}}"

    def assert_refused(self, key, value, level, message):
        self.mds[3][key] = value  # exposure EXPOSURES[1], detector 1
        with self.assertRaises(ValueError) as cm:
            gather_statistics(self.mds, self.dims, self.camera, level)
        self.assertEqual(str(cm.exception), message)

    def test_text_is_not_a_number(self):
        for level, key in (("DETECTOR", "DETECTOR_MEDIAN"), ("AMP", "AMP_N_5")):
            with self.subTest(level=level):
                self.setUp()
                self.assert_refused(key, "not-a-number", level,
                                    f"Flat statistics for {self.where} have {key!r} = 'not-a-number', "
                                    "which is not a number.")

    def test_numeric_text_is_read_as_the_butler_reads_it(self):
        """Through the butler a TaskMetadata's '1043.3' arrives as 1043.3; run()'s inputs read the same."""
        text = TaskMetadata()
        text["DETECTOR_MEDIAN"] = "1043.3"
        self.assertEqual(TaskMetadata.model_validate_json(text.model_dump_json())["DETECTOR_MEDIAN"], 1043.3)
        for as_mapping in (False, True):
            with self.subTest(as_mapping=as_mapping):
                self.setUp()
                self.mds[3]["DETECTOR_MEDIAN"], self.mds[3]["DETECTOR_N"] = "1043.3", "64"
                if as_mapping:
                    self.mds[3] = self.mds[3].to_dict()
                matrix = gather_statistics(self.mds, self.dims, self.camera, "DETECTOR")
                self.assertEqual((matrix.levels[1, 1], matrix.counts[1, 1]), (1043.3, 64.0))

    def test_boolean_is_not_read_as_one(self):
        for level, key, value in (("DETECTOR", "DETECTOR_N", True), ("AMP", "AMP_MEDIAN_2", False),
                                  ("AMP", "AMP_N_2", np.bool_(True))):
            with self.subTest(level=level, value=value):
                self.setUp()
                if isinstance(value, np.bool_):  # as a PropertyList-like mapping holds it
                    self.mds[3] = self.mds[3].to_dict()
                self.assert_refused(key, value, level,
                                    f"Flat statistics for {self.where} have {key!r} = {bool(value)}, a "
                                    "boolean, not a number.")

    def test_amplifier_beyond_the_cameras(self):
        self.mds[3]["AMP_N_8"] = 16
        self.assert_refused("AMP_NAME_8", "C20", "AMP",
                            f"Flat statistics for {self.where} have amplifier keys beyond the 8 amplifiers "
                            "of detector 1 in the camera (indices 0 to 7): 'AMP_NAME_8' = 'C20', 'AMP_N_8' "
                            "= 16. Were they measured with another camera?")

    def test_amplifier_far_beyond_the_cameras(self):
        self.assert_refused("AMP_MEDIAN_31", 1000.0, "AMP",
                            f"Flat statistics for {self.where} have amplifier keys beyond the 8 amplifiers "
                            "of detector 1 in the camera (indices 0 to 7): 'AMP_MEDIAN_31' = 1000.0. Were "
                            "they measured with another camera?")

    def test_amplifier_name_the_camera_lacks(self):
        self.assert_refused("AMP_NAME_3", "C99", "AMP",
                            f"Flat statistics for {self.where} have 'AMP_NAME_3' = 'C99', an amplifier "
                            "that detector 1 of the camera does not have (it has C10, C11, C12, C13, C14, "
                            "C15, C16, C17).")

    def test_amplifier_named_twice(self):
        self.assert_refused("AMP_NAME_6", "C11", "AMP",
                            f"Flat statistics for {self.where} name amplifier 'C11' twice, in 'AMP_NAME_1' "
                            "and 'AMP_NAME_6'.")

    def test_numbers_of_every_kind_are_read(self):
        self.mds[0]["DETECTOR_MEDIAN"] = np.float32(1000.5)
        self.mds[0]["DETECTOR_N"] = np.int64(256)
        self.mds[1]["DETECTOR_MEDIAN"] = float("nan")
        matrix = gather_statistics(self.mds, self.dims, self.camera, "DETECTOR")
        self.assertEqual((matrix.levels[0, 0], matrix.counts[0, 0]), (1000.5, 256.0))
        self.assertTrue(np.isnan(matrix.levels[1, 0]))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
