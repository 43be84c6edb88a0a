# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Tests of CpFlatNormalizationTask.run() and measureScales() on in-memory statistics."""

import re
import unittest
from types import SimpleNamespace

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.utils.tests
from lsst.cp.flatnorm import CpFlatNormalizationTask
from afw_standin_loader import load_afw_standin
from stats_factory import AMP_PIXELS, EXPOSURES, StatisticsFactory


class ApiTestCase(lsst.utils.tests.TestCase):
    def test_cp_pipe_config_fields(self):
        """cp_pipe's fields and defaults: level, scaleMaxIter and the down-selection trio."""
        config = CpFlatNormalizationTask.ConfigClass()
        self.assertEqual((config.level, config.scaleMaxIter), ("DETECTOR", 10))
        self.assertEqual((config.doDownSelection, config.downSelectionField, config.downSelectionValue),
                         (False, "observation_reason", None))
        self.assertEqual(set(type(config).downSelectionField.allowed),
                         {"observation_reason", "observation_type", "science_program", "group"})
        for field in ("level", "downSelectionField"):
            with self.assertRaises(pexConfig.FieldValidationError, msg=field):
                setattr(config, field, "CHIP")
            config = CpFlatNormalizationTask.ConfigClass()
            setattr(config, field, None)  # cp_pipe accepts None, which cannot run
            with self.assertRaisesRegex(pexConfig.FieldValidationError, "Required value cannot be None"):
                config.validate()

    def test_down_selection_needs_only_the_value(self):
        config = CpFlatNormalizationTask.ConfigClass()
        config.doDownSelection = True
        for missing in (None, ""):
            config.downSelectionValue = missing
            with self.assertRaises(pexConfig.FieldValidationError) as cm:
                config.validate()
            self.assertIn("downSelectionValue must be set when doDownSelection is True.", str(cm.exception))
        config.downSelectionValue = "single_led_flat_m565l3"  # with the default field
        config.validate()

    @staticmethod
    def down_select_group(value, records):
        """Run adjustQuantum, selecting on ``group``, on stand-ins for expanded refs with ``records``."""
        config = CpFlatNormalizationTask.ConfigClass()
        config.doDownSelection = True
        config.downSelectionField = "group"
        config.downSelectionValue = value
        connections = config.ConnectionsClass(config=config)
        refs = [SimpleNamespace(dataId=SimpleNamespace(hasRecords=lambda: True, records={"exposure": record}))
                for record in records]
        return connections.adjustQuantum({"inputMDs": (connections.inputMDs, refs)}, {}, "cpFlatNormalize",
                                         "{instrument: 'Cam', physical_filter: 'r'}")

    def test_down_selection_field_missing_from_records(self):
        old_record = SimpleNamespace(id=1, group_name="SIM_1")  # "group" before universe version 6
        with self.assertRaises(KeyError) as cm:
            self.down_select_group("SIM_1", [old_record])
        self.assertEqual(cm.exception.args, ("Exposure records have no field 'group' (downSelectionField).",))

    def test_no_match_message_lists_ten_values(self):
        records = [SimpleNamespace(group=f"G{i:02d}") for i in range(12)]
        with self.assertRaises(pipeBase.NoWorkFound) as cm:
            self.down_select_group("G99", records)
        self.assertEqual(str(cm.exception), (
            "cpFlatNormalize {instrument: 'Cam', physical_filter: 'r'}: no input exposure has group matching "
            "'G99' (ignoring case); the 12 inputs have 'G00', 'G01', 'G02', 'G03', 'G04', 'G05', 'G06', "
            "'G07', 'G08', 'G09' and 2 more. No scales are written for this data ID."))

    def test_camera_storage_class(self):
        config = CpFlatNormalizationTask.ConfigClass()
        self.assertEqual(config.ConnectionsClass(config=config).camera.storageClass, "CameraModel")
        config.cameraStorageClass = "Camera"
        camera = config.ConnectionsClass(config=config).camera
        self.assertEqual((camera.name, camera.storageClass, camera.isCalibration), ("camera", "Camera", True))
        with self.assertRaises(pexConfig.FieldValidationError):
            config.cameraStorageClass = "Exposure"

    def test_scale_table_name_follows_the_scales(self):
        def table_name(**names):
            config = CpFlatNormalizationTask.ConfigClass()
            for connection, name in names.items():
                setattr(config.connections, connection, name)
            return config.ConnectionsClass(config=config).outputScaleTable.name

        self.assertEqual(table_name(), "cpFlatNormalizeScaleTable")
        self.assertEqual(table_name(outputScales="cpFlatRedNormalizeScales"), "cpFlatRedNormalizeScaleTable")
        self.assertEqual(table_name(outputScales="flatScaleDict"), "flatScaleDictScaleTable")
        self.assertEqual(table_name(outputScales="cpFlatRedNormalizeScales", outputScaleTable="redTable"),
                         "redTable")

    def test_measure_scales_struct(self):
        task = CpFlatNormalizationTask()
        gains = np.array([0.9, 1.0, 1.1])
        lamps = np.array([100.0, 300.0])
        result = task.measureScales(np.outer(gains, lamps))
        np.testing.assert_allclose(result.detScales, gains, rtol=1e-12)
        np.testing.assert_allclose(result.expScales, lamps, rtol=1e-12)
        self.assertIs(result.vectorE, result.expScales)
        self.assertIs(result.vectorG, result.detScales)
        np.testing.assert_allclose(result.bgModel, np.outer(gains, lamps), rtol=1e-12)
        self.assertTrue(result.converged)
        self.assertEqual(result.nGroups, 1)


class DetectorLevelTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.factory = StatisticsFactory()
        self.task = CpFlatNormalizationTask()

    def test_layout_and_values_with_missing_pairs(self):
        missing = {(EXPOSURES[0], 4), (EXPOSURES[2], 9)}
        pairs = self.factory.all_pairs(skip=missing)
        mds, dims = self.factory.inputs(pairs)
        result = self.task.run(mds, dims, self.factory.camera)
        scales = result.outputScales
        self.assertEqual(set(scales), {"expScale", "detScale"})
        detectors = [d.id for d in self.factory.camera]
        self.assertEqual(sorted(scales["detScale"]), detectors)
        true_g, norm = self.factory.true_detector_scales(pairs)
        for detector in detectors:
            self.assertAlmostEqual(scales["detScale"][detector], true_g[detector], places=10)
            amp_names = [amp.getName() for amp in self.factory.camera[detector]]
            self.assertEqual(list(scales["expScale"][detector]), amp_names)
            for amp in amp_names:
                self.assertEqual(sorted(scales["expScale"][detector][amp]), EXPOSURES)
                for exposure in EXPOSURES:
                    self.assertIsInstance(scales["expScale"][detector][amp][exposure], float)
                    self.assertAlmostEqual(scales["expScale"][detector][amp][exposure],
                                           self.factory.lamps[exposure] * norm, places=7)
        table = result.outputScaleTable
        self.assertEqual(len(table), len(mds))
        self.assertTrue(np.all(table["flag"] == "USED"))
        self.assertFalse(np.any((table["exposure"] == EXPOSURES[0]) & (table["detector"] == 4)))
        np.testing.assert_allclose(table["model"], table["level"], rtol=1e-10)
        self.assertEqual(table.meta["LEVEL"], "DETECTOR")

    def test_missing_statistic_names_key_and_data_id(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        mds[5] = self.factory.metadata(dims[5]["exposure"], dims[5]["detector"], drop="DETECTOR_N")
        with self.assertRaises(KeyError) as cm:
            self.task.run(mds, dims, self.factory.camera)
        message = str(cm.exception)
        self.assertIn("'DETECTOR_N'", message)
        self.assertIn(f"exposure={dims[5]['exposure']}", message)
        self.assertIn(f"detector={dims[5]['detector']}", message)

    def test_missing_dimension(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:3])
        del dims[1]["exposure"]
        with self.assertRaisesRegex(KeyError, "no 'exposure' dimension"):
            self.task.run(mds, dims, self.factory.camera)

    def test_detector_name_in_data_id_is_refused_naming_it(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:3])
        dims[2]["detector"] = self.factory.camera[dims[2]["detector"]].getName()
        with self.assertRaises(ValueError) as cm:
            self.task.run(mds, dims, self.factory.camera)
        self.assertEqual(str(cm.exception), f"Input data ID {dims[2]}: detector must be the integer ID, "
                                            f"not {dims[2]['detector']!r} (a detector name?).")

    def test_ids_that_went_through_text_are_accepted(self):
        pairs = self.factory.all_pairs()
        mds, dims = self.factory.inputs(pairs)
        for dim in dims:
            dim.update(exposure=str(dim["exposure"]), detector=str(dim["detector"]))
        scales = self.task.run(mds, dims, self.factory.camera).outputScales
        expected = self.task.run(*self.factory.inputs(pairs), self.factory.camera).outputScales
        self.assertEqual(scales, expected)

    def test_no_exposure_with_a_valid_level_is_named(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        for md in mds:
            md["DETECTOR_MEDIAN"] = float("nan")
        with self.assertRaisesRegex(ValueError, rf"Exposures \[{', '.join(map(str, EXPOSURES))}\] have no "
                                    "valid flat level"):
            self.task.run(mds, dims, self.factory.camera)

    def test_outlier_is_rejected_logged_and_flagged(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        index = next(i for i, d in enumerate(dims) if d["exposure"] == EXPOSURES[2] and d["detector"] == 7)
        mds[index]["DETECTOR_MEDIAN"] *= 0.8  # partly shadowed
        with self.assertLogs(self.task.log.name, level="WARNING") as logs:
            result = self.task.run(mds, dims, self.factory.camera)
        self.assertTrue(any(f"exposure={EXPOSURES[2]}, detector=7" in line and "Rejected" in line
                            for line in logs.output))
        table = result.outputScaleTable
        flagged = table[table["flag"] == "REJECTED"]
        self.assertEqual([(int(r["exposure"]), int(r["detector"])) for r in flagged], [(EXPOSURES[2], 7)])
        self.assertAlmostEqual(float(flagged["log_residual"][0]), np.log(0.8), delta=0.01)
        used = [pair for pair in self.factory.all_pairs() if pair != (EXPOSURES[2], 7)]
        true_g, norm = self.factory.true_detector_scales(used)
        self.assertAlmostEqual(result.outputScales["detScale"][7], true_g[7], places=10)
        self.assertEqual(self.task.metadata["nRejected"], 1)

    def test_omit_unused_scales(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        index = next(i for i, d in enumerate(dims) if d["exposure"] == EXPOSURES[2] and d["detector"] == 7)
        mds[index]["DETECTOR_MEDIAN"] *= 0.8
        kept = self.task.run(mds, dims, self.factory.camera).outputScales
        self.assertIn(EXPOSURES[2], kept["expScale"][7]["C10"])  # cp_pipe's layout by default
        config = CpFlatNormalizationTask.ConfigClass()
        config.omitUnusedScales = True
        omitted = CpFlatNormalizationTask(config=config).run(mds, dims, self.factory.camera).outputScales
        for amp, scales in omitted["expScale"][7].items():
            self.assertEqual(sorted(scales), [e for e in EXPOSURES if e != EXPOSURES[2]], amp)
        self.assertEqual(omitted["expScale"][6], kept["expScale"][6])
        self.assertEqual(omitted["detScale"], kept["detScale"])

    def test_many_invalid_entries_are_counted_after_a_limit(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        config = CpFlatNormalizationTask.ConfigClass()
        config.level = "AMP"
        task = CpFlatNormalizationTask(config=config)
        for md in mds[:14]:  # 14 datasets x 8 amplifiers without a level: 112 invalid entries
            for i in range(8):
                md[f"AMP_MEDIAN_{i}"] = float("nan")
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            task.run(mds, dims, self.factory.camera)
        individual = [line for line in logs.output if "is invalid; excluded" in line]
        self.assertEqual(len(individual), 100)
        self.assertTrue(any("... and 12 more entries flagged INVALID" in line for line in logs.output))
        self.assertEqual(task.metadata["nInvalid"], 14 * 8)

    def test_disconnected_exposures_raise_naming_groups(self):
        first = [(e, d) for e in EXPOSURES[:2] for d in range(0, 5)]
        second = [(e, d) for e in EXPOSURES[2:] for d in range(5, 11)]
        mds, dims = self.factory.inputs(first + second)
        with self.assertRaisesRegex(ValueError, r"Group 0: detectors \[0, 1, 2, 3, 4\], exposures "
                                                rf"\[{EXPOSURES[0]}, {EXPOSURES[1]}\]"):
            self.task.run(mds, dims, self.factory.camera)
        config = CpFlatNormalizationTask.ConfigClass()
        config.disconnectedPolicy = "SEPARATE"
        task = CpFlatNormalizationTask(config=config)
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            result = task.run(mds, dims, self.factory.camera)
        self.assertTrue(any("2 groups" in line for line in logs.output))
        self.assertEqual(sorted(set(result.outputScaleTable["group"])), [0, 1])

    def test_duplicate_input_rejected(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:2] * 2)
        with self.assertRaisesRegex(ValueError, "more than once"):
            self.task.run(mds, dims, self.factory.camera)

    def test_propertylist_like_dicts_are_accepted(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        plain = [md.to_dict() for md in mds]
        reference = self.task.run(mds, dims, self.factory.camera).outputScales
        self.assertEqual(self.task.run(plain, dims, self.factory.camera).outputScales, reference)


class AmpLevelTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.factory = StatisticsFactory(seed=9)
        config = CpFlatNormalizationTask.ConfigClass()
        config.level = "AMP"
        self.task = CpFlatNormalizationTask(config=config)

    def true_amp_scales(self, used_pairs):
        gains = self.factory.amp_gain
        weights = {key: sum(1 for _, d in used_pairs if d == key[0]) for key in gains}
        norm = sum(gains[k] * weights[k] for k in gains) / sum(weights.values())
        return {k: v / norm for k, v in gains.items()}, norm

    def test_mixed_amp_counts_shuffled_order_and_missing_pairs(self):
        pairs = self.factory.all_pairs(skip={(EXPOSURES[3], 0), (EXPOSURES[1], 10)})
        mds, dims = self.factory.inputs(pairs, shuffle=True)
        result = self.task.run(mds, dims, self.factory.camera)
        true_g, norm = self.true_amp_scales(pairs)
        det_scale = result.outputScales["detScale"]
        for det in self.factory.camera:
            self.assertEqual(sorted(det_scale[det.id]), sorted(a.getName() for a in det))
            self.assertEqual(len(det_scale[det.id]), 8 if det.type == "WAVEFRONT" else 16)
            for amp in det:
                self.assertAlmostEqual(det_scale[det.id][amp.getName()], true_g[(det.id, amp.getName())],
                                       places=10)
                for exposure in EXPOSURES:
                    self.assertAlmostEqual(result.outputScales["expScale"][det.id][amp.getName()][exposure],
                                           self.factory.lamps[exposure] * norm, places=7)
        table = result.outputScaleTable
        self.assertEqual(len(table), sum(len(self.factory.camera[d]) for _, d in pairs))
        row = table[(table["detector"] == 9) & (table["amplifier"] == "C13")
                    & (table["exposure"] == EXPOSURES[0])][0]
        expected = self.factory.amp_gain[(9, "C13")] * self.factory.lamps[EXPOSURES[0]]
        self.assertAlmostEqual(row["level"], expected)
        self.assertEqual(row["n_pixels"], AMP_PIXELS)

    def test_dead_amplifier_is_flagged_and_disturbs_nothing(self):
        pairs = self.factory.all_pairs()
        mds, dims = self.factory.inputs(pairs)
        for md, dim in zip(mds, dims):
            if dim["detector"] == 3:
                index = next(i for i in range(16) if md[f"AMP_NAME_{i}"] == "C05")
                md[f"AMP_MEDIAN_{index}"] = 0.0
        with self.assertLogs(self.task.log.name, level="WARNING") as logs:
            result = self.task.run(mds, dims, self.factory.camera)
        self.assertTrue(any("detector=3, amp=C05" in line and "NaN" in line for line in logs.output))
        self.assertTrue(np.isnan(result.outputScales["detScale"][3]["C05"]))
        table = result.outputScaleTable
        dead = table[(table["detector"] == 3) & (table["amplifier"] == "C05")]
        self.assertEqual(set(dead["flag"]), {"INVALID"})
        alive = {k: v for k, v in self.factory.amp_gain.items() if k != (3, "C05")}
        norm = np.mean(list(alive.values()))
        for (det, amp), gain in alive.items():
            self.assertAlmostEqual(result.outputScales["detScale"][det][amp], gain / norm, places=10)

    def test_omit_unused_scales_per_amplifier(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs())
        for md, dim in zip(mds, dims):
            if dim["detector"] == 3:
                md[f"AMP_MEDIAN_{[md[f'AMP_NAME_{i}'] for i in range(16)].index('C05')}"] = 0.0
        self.task.config.omitUnusedScales = True
        exp_scale = self.task.run(mds, dims, self.factory.camera).outputScales["expScale"]
        self.assertEqual(exp_scale[3]["C05"], {})
        self.assertEqual(sorted(exp_scale[3]["C04"]), EXPOSURES)

    def test_afw_camera_gives_the_same_scales(self):
        afw = load_afw_standin()
        mds, dims = self.factory.inputs(self.factory.all_pairs(), shuffle=True)
        camera = afw.camera_from_model(self.factory.camera)
        expected = self.task.run(mds, dims, self.factory.camera).outputScales
        self.assertEqual(self.task.run(mds, dims, camera).outputScales, expected)
        # Only IDs and amplifier names are read: geometry the model could not hold does not matter.
        camera.detectors[4].pixel_size = afw.Point2D(x=0.01, y=0.02)
        self.assertEqual(self.task.run(mds, dims, camera).outputScales, expected)

    def test_unknown_amplifier_name(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:2])
        mds[0]["AMP_NAME_3"] = "C99"
        pattern = r"have 'AMP_NAME_3' = 'C99', an amplifier that detector \d+ of the camera does not have "
        with self.assertRaisesRegex(ValueError, pattern + r"\(it has C\d\d, "):
            self.task.run(mds, dims, self.factory.camera)
        mds[0]["AMP_NAME_3"] = mds[0]["AMP_NAME_5"]
        twice = f"name amplifier '{mds[0]['AMP_NAME_5']}' twice, in 'AMP_NAME_3' and 'AMP_NAME_5'"
        with self.assertRaisesRegex(ValueError, twice):
            self.task.run(mds, dims, self.factory.camera)

    def test_detector_not_in_camera(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:2])
        dims[0]["detector"] = 42
        pattern = r"Detector 42 has flat statistics \(\{.*detector=42\}\) but is not in the camera SimFlatCam"
        with self.assertRaisesRegex(KeyError, pattern):
            self.task.run(mds, dims, self.factory.camera)

    def test_missing_amp_key_names_key_and_data_id(self):
        mds, dims = self.factory.inputs(self.factory.all_pairs()[:3])
        del mds[2]["AMP_N_4"]
        with self.assertRaisesRegex(KeyError, r"'AMP_N_4'") as cm:
            self.task.run(mds, dims, self.factory.camera)
        self.assertIn(f"exposure={dims[2]['exposure']}", str(cm.exception))


class ColourTermsTestCase(lsst.utils.tests.TestCase):
    """colourTerms: 0 is today's output; > 0 puts each entry on the reference colour."""

    def setUp(self):
        self.factory = StatisticsFactory(seed=13)
        rng = np.random.default_rng(14)
        # Two sensor families answer the lamp colour differently (log response per unit colour).
        self.slopes = {det.id: (0.01 if det.id % 2 else -0.01) + rng.uniform(-2e-3, 2e-3)
                       for det in self.factory.camera}
        self.colours = dict(zip(EXPOSURES, [-0.4, -0.1, 0.15, 0.35]))

    def inputs(self, pairs, colour=True, outlier=None):
        mds, dims = self.factory.inputs(pairs)
        for md, dim in zip(mds, dims):
            factor = np.exp(self.slopes[dim["detector"]] * self.colours[dim["exposure"]]) if colour else 1.0
            if (dim["exposure"], dim["detector"]) == outlier:
                factor *= 0.8
            md["DETECTOR_MEDIAN"] *= factor
            for i in range(len(self.factory.camera[dim["detector"]])):
                md[f"AMP_MEDIAN_{i}"] *= factor
        return mds, dims

    @staticmethod
    def task(**config):
        task_config = CpFlatNormalizationTask.ConfigClass()
        for name, value in config.items():
            setattr(task_config, name, value)
        return CpFlatNormalizationTask(config=task_config)

    def test_config(self):
        config = CpFlatNormalizationTask.ConfigClass()
        self.assertEqual((config.colourTerms, config.chooseColourTerms), (0, False))
        for field, value, allowed in (("colourTerms", -1, "[0,inf)"), ("colourTolerance", 0.0, "(0.0,inf)"),
                                      ("colourMaxSweeps", 0, "[1,inf)")):
            with self.assertRaisesRegex(pexConfig.FieldValidationError, re.escape(allowed), msg=field):
                setattr(config, field, value)

    def reference(self, mds, dims, level, omit):
        """Today's code path, spelled out: the separable solver and the dictionary writer."""
        from lsst.cp.flatnorm.flat_statistics import gather_statistics
        from lsst.cp.flatnorm.scale_dictionary import build_scale_dictionary
        from lsst.cp.flatnorm.scale_solver import solve_separable_scales

        matrix = gather_statistics(mds, dims, self.factory.camera, level)
        solution = solve_separable_scales(matrix.levels, matrix.counts)
        scales = build_scale_dictionary(
            level, exposures=matrix.exposures, row_detectors=matrix.detectors,
            row_amplifiers=matrix.amplifiers, e_values=solution.column_scales, g_values=solution.row_scales,
            amp_names={d: [a.getName() for a in self.factory.camera[d]] for d in set(matrix.detectors)},
            omit=~solution.used if omit else None)
        rows, columns = np.nonzero(matrix.present.T)
        rows, columns = columns, rows
        columns_of_today = {
            "exposure": np.asarray(matrix.exposures)[columns], "detector": np.asarray(matrix.detectors)[rows],
            "amplifier": np.asarray(matrix.amplifiers, dtype=str)[rows],
            "level": matrix.levels[rows, columns],
            "n_pixels": matrix.counts[rows, columns], "exp_scale": solution.column_scales[columns],
            "det_scale": solution.row_scales[rows], "model": solution.model[rows, columns],
            "log_residual": solution.log_residuals[rows, columns],
            "flag": np.array(["USED", "INVALID", "REJECTED"])[solution.flags[rows, columns]],
            "group": solution.row_groups[rows],
        }
        meta = {"LEVEL": level, "ITERATIONS": solution.iterations, "CONVERGED": solution.converged,
                "N_GROUPS": solution.n_groups, "LOG_RESIDUAL_RMS": solution.rms,
                "LOG_RESIDUAL_SIGMA": solution.sigma}
        return scales, columns_of_today, meta

    def test_no_colour_terms_is_todays_output_bit_for_bit(self):
        pairs = self.factory.all_pairs(skip={(EXPOSURES[1], 4), (EXPOSURES[3], 9)})
        for level in ("DETECTOR", "AMP"):
            for omit in (False, True):
                with self.subTest(level=level, omit=omit):
                    mds, dims = self.inputs(pairs, outlier=(EXPOSURES[2], 7))
                    mds[0]["AMP_MEDIAN_3"] = float("nan")
                    result = self.task(level=level, omitUnusedScales=omit).run(mds, dims, self.factory.camera)
                    scales, columns, meta = self.reference(mds, dims, level, omit)
                    self.assertEqual(result.outputScales, scales)
                    table = result.outputScaleTable
                    for name, values in columns.items():
                        np.testing.assert_array_equal(np.asarray(table[name]), values, err_msg=name)
                    self.assertEqual({key: table.meta[key] for key in meta}, meta)
                    self.assertEqual(table.meta["COLOUR_TERMS"], 0)
                    self.assertNotIn("colour_u_1", table.colnames)

    def test_colour_terms_put_each_entry_on_the_reference_colour(self):
        pairs = self.factory.all_pairs(skip={(EXPOSURES[3], 4)})  # detector 4 misses the reddest
        mds, dims = self.inputs(pairs)
        for level in ("DETECTOR", "AMP"):
            with self.subTest(level=level):
                task = self.task(level=level, colourTerms=1)
                result = task.run(mds, dims, self.factory.camera)
                table = result.outputScaleTable
                np.testing.assert_allclose(table["model"], table["level"], rtol=1e-9)
                self.assertEqual(table.meta["COLOUR_TERMS"], 1)
                self.assertTrue(table.meta["COLOUR_CONVERGED"])
                self.assertEqual(len(table.meta["COLOUR_RMS"]), 2)
                self.assertGreater(table.meta["COLOUR_RMS"][0], 1e-3)
                self.assertLess(table.meta["COLOUR_RMS"][1], 1e-9)
                # The combine divides each entry by expScale: level / expScale is the row's response
                # at the reference colour, G, the same in every exposure.
                exp_scale = result.outputScales["expScale"]
                for row in table:
                    amp = row["amplifier"] or "C10"
                    scale = exp_scale[int(row["detector"])][amp][int(row["exposure"])]
                    self.assertAlmostEqual(row["level"] / scale / row["det_scale"], 1.0, delta=1e-9)
                    expected = row["exp_scale"] * np.exp(row["colour_u_1"] * row["colour_v_1"])
                    self.assertAlmostEqual(scale, expected, delta=1e-9 * scale)
                # u follows the detectors' colour slopes, v the exposures' colours.
                per_detector = {int(r["detector"]): r["colour_u_1"] for r in table
                                if r["amplifier"] in ("", "C10")}
                slopes = [self.slopes[d] for d in sorted(per_detector)]
                self.assertGreater(np.corrcoef(slopes, [per_detector[d] for d in sorted(per_detector)])[0, 1],
                                   0.999)
                self.assertEqual(task.metadata["colourTerms"], 1)

    def test_uncertainty_columns_and_metadata(self):
        rng = np.random.default_rng(15)
        mds, dims = self.inputs(self.factory.all_pairs())
        for md in mds:
            md["DETECTOR_MEDIAN"] *= np.exp(1e-3 * rng.standard_normal())
        task = self.task(colourTerms=1)
        table = task.run(mds, dims, self.factory.camera).outputScaleTable
        for name in ("exp_scale_err", "det_scale_err"):
            self.assertTrue(np.all(np.isfinite(table[name])) and np.all(table[name] > 0), name)
        self.assertGreater(table.meta["SCALE_ERR_DOF"], 0)
        for key in ("expScaleErrMedian", "expScaleErrMax", "detScaleErrMedian", "detScaleErrMax",
                    "scaleErrScatter", "scaleErrDof", "colourRms", "colourConverged"):
            self.assertIn(key, task.metadata.names(), key)
        self.assertAlmostEqual(task.metadata["detScaleErrMax"], float(np.max(table["det_scale_err"])))

    def test_choose_colour_terms_from_the_data(self):
        pairs = self.factory.all_pairs()
        rng = np.random.default_rng(16)
        for colour, expected in ((True, 1), (False, 0)):
            with self.subTest(colour=colour):
                mds, dims = self.inputs(pairs, colour=colour)
                for md in mds:
                    md["DETECTOR_MEDIAN"] *= np.exp(1e-4 * rng.standard_normal())
                task = self.task(colourTerms=2, chooseColourTerms=True)
                table = task.run(mds, dims, self.factory.camera).outputScaleTable
                self.assertEqual(table.meta["COLOUR_TERMS"], expected)
                self.assertEqual(table.meta["COLOUR_TERMS_MAX"], 2)
                self.assertEqual(len(table.meta["COLOUR_HELD_OUT"]), 3)
                self.assertEqual(len(table.meta["COLOUR_RMS"]), 3)

    def test_measure_scales_returns_the_colour_terms(self):
        gains, lamps = np.array([0.9, 1.0, 1.1, 1.05]), np.array([100.0, 300.0, 200.0])
        slopes, colours = np.array([0.01, -0.01, 0.005, -0.005]), np.array([-0.5, 0.1, 0.4])
        levels = np.outer(gains, lamps) * np.exp(np.outer(slopes, colours))
        result = self.task(colourTerms=1).measureScales(levels)
        self.assertEqual(result.colourTerms, 1)
        self.assertEqual((result.detColours.shape, result.expColours.shape), ((4, 1), (3, 1)))
        np.testing.assert_allclose(result.bgModel, levels, rtol=1e-10)
        self.assertEqual(self.task().measureScales(levels).detColours.shape, (4, 0))


class BadInputTestCase(lsst.utils.tests.TestCase):
    """What the reliability matrix found: failures before any work with a message, numbers printed as
    numbers, config ranges stated, and the rows without a measurement listed in the dictionary."""

    def setUp(self):
        self.factory = StatisticsFactory()
        self.pairs = self.factory.all_pairs()

    def task(self, **config):
        task_config = CpFlatNormalizationTask.ConfigClass()
        for name, value in config.items():
            setattr(task_config, name, value)
        return CpFlatNormalizationTask(config=task_config)

    def test_camera_none_fails_before_any_work(self):
        task = self.task()
        with self.assertNoLogs(task.log.name, level="DEBUG"):
            with self.assertRaises(TypeError) as cm:
                task.run(*self.factory.inputs(self.pairs), None)
        self.assertEqual(str(cm.exception), (
            "CpFlatNormalizationTask.run: camera is None; pass the camera (a CameraModel, or an afw "
            "Camera) whose detectors and amplifiers the statistics are of."))
        self.assertNotIn("nUsed", task.metadata)

    def test_detector_not_in_camera_fails_before_the_solve(self):
        mds, dims = self.factory.inputs(self.pairs[:2])
        dims[1]["detector"] = 42
        task = self.task()
        with self.assertNoLogs(task.log.name, level="DEBUG"):
            with self.assertRaises(KeyError) as cm:
                task.run(mds, dims, self.factory.camera)
        self.assertEqual(cm.exception.args, (
            f"Detector 42 has flat statistics ({{instrument=SimFlatCam, exposure={EXPOSURES[0]}, "
            "detector=42}) but is not in the camera SimFlatCam.",))

    def test_invalid_entry_warning_prints_numbers(self):
        mds, dims = self.factory.inputs(self.pairs)
        mds[3]["DETECTOR_MEDIAN"] = float("nan")
        mds[4]["DETECTOR_N"] = 0
        task = self.task()
        with self.assertLogs(task.log.name, level="WARNING") as logs:
            task.run(mds, dims, self.factory.camera)
        self.assertEqual([line for line in logs.output if "is invalid" in line], [
            f"WARNING:{task.log.name}:Flat level nan with {16 * AMP_PIXELS} pixels for {{exposure="
            f"{EXPOSURES[0]}, detector=3}} is invalid; excluded.",
            f"WARNING:{task.log.name}:Flat level {mds[4]['DETECTOR_MEDIAN']:.6g} with 0 pixels for "
            f"{{exposure={EXPOSURES[0]}, detector=4}} is invalid; excluded.",
        ])
        self.assertFalse(any("np.float64" in line for line in logs.output))

    def test_config_ranges_are_stated(self):
        config = CpFlatNormalizationTask.ConfigClass()
        for field, value, allowed in (("scaleMaxIter", 0, "0 is outside of valid range [1,inf)"),
                                      ("outlierSigma", -1.0, "-1.0 is outside of valid range [0.0,inf)"),
                                      ("outlierFloor", -0.1, "-0.1 is outside of valid range [0.0,inf)")):
            with self.subTest(field=field), self.assertRaises(pexConfig.FieldValidationError) as cm:
                setattr(config, field, value)
            self.assertIn(f"RangeField '{field}' failed validation: {allowed}", str(cm.exception))

    def test_rows_without_a_measurement_are_flagged_in_the_dictionary(self):
        amp = [amp.getName() for amp in self.factory.camera[3]][5]  # AMP_*_5, in the camera's order
        for level, dead, expected in (("AMP", "AMP_MEDIAN_5", {3: {amp: "NO_VALID_ENTRY"}}),
                                      ("DETECTOR", "DETECTOR_MEDIAN", {3: "NO_VALID_ENTRY"})):
            with self.subTest(level=level):
                mds, dims = self.factory.inputs(self.pairs)
                for md, dim in zip(mds, dims):
                    if dim["detector"] == 3:
                        md[dead] = 0.0
                scales = self.task(level=level).run(mds, dims, self.factory.camera).outputScales
                self.assertEqual(list(scales), ["expScale", "detScale", "flags"])
                self.assertEqual(scales["flags"], expected)
                det_scale = scales["detScale"][3]
                self.assertTrue(np.isnan(det_scale[amp] if level == "AMP" else det_scale))
                clean = self.task(level=level).run(*self.factory.inputs(self.pairs), self.factory.camera)
                self.assertEqual(list(clean.outputScales), ["expScale", "detScale"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
