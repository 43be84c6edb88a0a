# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The "own camera" tutorial (doc/lsst.cp.flatnorm/own-camera.rst), run exactly as written.

Every code block of the page is taken from the page itself: a block with a ``:caption:`` is
written to the file it names, and every command of every ``bash`` block is run, in page order, in
an empty directory with this interpreter's ``bin`` first on ``PATH`` (so ``python``, ``cp-flatnorm``,
``pipetask`` and ``butler`` are the installed ones), its words expanded by bash.  The ``python`` and
``pipetask`` commands run as programs; ``cp-flatnorm`` and ``butler`` run their command-line entry
points in this process (saving a middleware import each; their programs run in test_cli_ingest,
test_cli_camera_register and test_front_door, and in daf_butler's own tests).  The test then reads
the certified flat and the normalization scales back and compares them with the truth
``make_flats.py`` recorded.
"""

import contextlib

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

import astropy.time
import numpy as np
import pytest
import yaml

import lsst.utils.tests
from check_methods import run_check_methods
from lsst.cp.flatnorm.scale_dictionary import exposure_scales
from lsst.daf.butler import Butler, Timespan
from pipetask_in_process import butler, cp_flatnorm

PAGE = Path(__file__).parents[1] / "doc" / "lsst.cp.flatnorm" / "own-camera.rst"
BIN = Path(sys.executable).parent
SCALES_DATASET = "cpFlatNormalizeScales"
_BLOCK = re.compile(r"^\.\. code-block:: (\w+)\n((?:   :\w+: .*\n)*)\n((?:(?:   .*)?\n)+)", re.M)


def page_blocks(text):
    """(language, caption or None, code) of every code block of an rst page, in order."""
    blocks = []
    for match in _BLOCK.finditer(text):
        options = dict(re.findall(r"^   :(\w+): (.*)$", match.group(2), re.M))
        code = "\n".join(line[3:] for line in match.group(3).splitlines()).strip() + "\n"
        blocks.append((match.group(1), options.get("caption"), code))
    return blocks


def block_commands(code):
    """The commands of a bash block: one per line, a line ending in a backslash continued."""
    return [command.strip() for command in code.replace("\\\n", " ").splitlines() if command.strip()]


def run_command(command, cwd, env):
    """Run one command of the page, its words expanded by bash; return its (status, stdout, stderr)."""
    expand = subprocess.run(["bash", "-c", f'printf "%s\\0" {command}'], cwd=cwd, env=env,
                            capture_output=True, text=True, check=True)
    argv = expand.stdout.split("\0")[:-1]
    if argv[0] == "butler":
        with contextlib.chdir(cwd):
            process = butler(*argv[1:])
        return process.returncode, process.stdout, process.stderr
    if argv[0] == "cp-flatnorm":
        with contextlib.chdir(cwd):
            process = cp_flatnorm(*argv[1:])
        return process.returncode, process.stdout, process.stderr
    process = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    return process.returncode, process.stdout, process.stderr


pytestmark = pytest.mark.slow


@unittest.skipUnless((BIN / "pipetask").exists(), "pipetask is not installed beside this interpreter")
class TutorialTestCase(lsst.utils.tests.TestCase):
    """Run the page, then check what it produced against the truth."""

    @classmethod
    def setUpClass(cls):
        cls.work = Path(tempfile.mkdtemp())
        cls.blocks = page_blocks(PAGE.read_text())
        cls.outputs, cls.errors = [], []
        env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
        for language, caption, code in cls.blocks:
            if caption is not None:
                (cls.work / caption).write_text(code)
            elif language == "bash":
                outputs, errors = [], []
                for command in block_commands(code):
                    status, out, err = run_command(command, cls.work, env)
                    if status != 0:
                        raise RuntimeError(f"Tutorial step failed:\n{command}\n{out}\n{err}")
                    outputs.append(out)
                    errors.append(err)
                cls.outputs.append("".join(outputs))
                cls.errors.append("".join(errors))
        cls.truth = json.loads((cls.work / "truth.json").read_text())
        cls.butler = Butler.from_config(str(cls.work / "repo"))

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.work, ignore_errors=True)

    def check_page_has_every_step(self):
        commands = [code.split()[0] for language, caption, code in self.blocks
                    if language == "bash" and caption is None]
        self.assertEqual(commands, ["cp-flatnorm", "cp-flatnorm", "python", "pipetask", "butler", "python"])
        self.assertEqual([caption for _, caption, _ in self.blocks if caption],
                         ["camera.yaml", "MyCam.yaml", "make_flats.py", "check_flat.py"])

    def check_flat_script_prints_no_warning(self):
        commands = [code for language, caption, code in self.blocks if language == "bash" and caption is None]
        (errors,) = [error for code, error in zip(commands, self.errors) if "python make_flats.py" in code]
        self.assertNotIn("Warning", errors)

    def check_camera_file_has_every_key_obs_base_reads(self):
        """The keys lsst.obs.base.yamlCamera.makeCamera reads without a default (obs_base, 2026)."""
        camera = yaml.safe_load((self.work / "camera.yaml").read_text())
        self.assertLessEqual({"name", "plateScale", "transforms", "CCDs"}, set(camera))
        self.assertEqual(camera["transforms"]["nativeSys"], "FocalPlane")
        for ccd in camera["CCDs"].values():
            self.assertLessEqual({"id", "serial", "detectorType", "bbox", "pixelSize", "transformDict",
                                  "refpos", "offset", "transposeDetector", "pitch", "yaw", "roll",
                                  "amplifiers"}, set(ccd))
            for amp in ccd["amplifiers"].values():
                self.assertLessEqual({"hdu", "ixy", "perAmpData", "rawBBox", "rawDataBBox",
                                      "rawSerialOverscanBBox", "rawParallelOverscanBBox",
                                      "rawSerialPrescanBBox", "readCorner", "gain", "readNoise", "saturation",
                                      "flipXY", "linearityCoeffs", "linearityType", "linearityThreshold",
                                      "linearityMax"}, set(amp))

    def check_exposure_scales_follow_the_lamp(self):
        scales = self.butler.get(SCALES_DATASET, instrument="MyCam", physical_filter="my_r",
                                 collections="u/me/flat")
        found = exposure_scales(scales)
        lamps = self.truth["lamps"]
        ratios = np.array([found[2026113000001 + i] / lamp for i, lamp in enumerate(lamps)])
        # Each exposure's level is the mean of 6144 Poisson pixels of ~2e4 electrons: 1e-4 noise.
        np.testing.assert_allclose(ratios / ratios.mean(), 1.0, atol=5e-4)

    def check_certified_flat_is_the_response(self):
        when = Timespan.fromInstant(astropy.time.Time("2026-12-15T00:00:00", scale="tai"))
        ratios = []
        for detector, amps in self.truth["response"].items():
            flat = self.butler.get("flat", instrument="MyCam", detector=detector, physical_filter="my_r",
                                   collections="MyCam/calib", timespan=when)
            self.assertEqual(flat.image.array.shape, (48, 64))
            for half, response in zip(np.hsplit(flat.image.array, 2), amps):
                ratios.append(half.mean() / response)
        # One overall scale for every amplifier of both detectors, to the noise of six flats.
        np.testing.assert_allclose(np.array(ratios) / np.mean(ratios), 1.0, atol=3e-4)
        # check_flat.py prints the same ratios, four decimals each.
        printed = [float(value) for value in re.findall(r"'(\d+\.\d{4})'", self.outputs[-1])]
        np.testing.assert_allclose(printed, ratios, atol=5e-5)

    def check_no_flat_outside_the_certified_range(self):
        when = Timespan.fromInstant(astropy.time.Time("2026-11-30T19:00:00", scale="tai"))
        with self.assertRaises(LookupError):
            self.butler.get("flat", instrument="MyCam", detector=0, physical_filter="my_r",
                            collections="MyCam/calib", timespan=when)

    def test_all_checks(self):
        run_check_methods(self)


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()
