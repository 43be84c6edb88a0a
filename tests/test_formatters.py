# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The libyaml formatter the seed config declares for StructuredDataDict."""

import tempfile
import unittest

import yaml

import lsst.utils.tests
from lsst.cp.pipe.butler_setup import make_repo
from lsst.daf.butler import Butler, DatasetType


class LibyamlFormatterTestCase(lsst.utils.tests.TestCase):
    def test_scales_round_trip_through_repo(self):
        scales = {
            "expScale": {3: {"C10": {2026112500010: 1234.5, 2026112500011: float("nan")}}},
            "detScale": {3: {"C10": 0.987654321012345}},
        }
        with tempfile.TemporaryDirectory() as root:
            butler = make_repo(root)
            butler.registry.insertDimensionData("instrument", {"name": "SimFlatCam"})
            butler.registry.registerDatasetType(
                DatasetType("scales", ("instrument",), "StructuredDataDict", universe=butler.dimensions)
            )
            butler.registry.registerRun("run")
            ref = butler.put(scales, "scales", instrument="SimFlatCam", run="run")
            uri = butler.getURI(ref)
            # The very text daf_butler's own (pure-Python) YAML formatter writes.
            self.assertEqual(uri.read().decode(), yaml.safe_dump(scales, sort_keys=False))
            stored = butler._datastore.getStoredItemsInfo(ref)  # which formatter the seed config chose
            self.assertEqual([info.formatter for info in stored],
                             ["lsst.cp.pipe.formatters.LibyamlFormatter"])
            copy = Butler.from_config(root, collections="run").get("scales", instrument="SimFlatCam")
        self.assertEqual(list(copy["expScale"][3]["C10"]), [2026112500010, 2026112500011])
        self.assertEqual(copy["expScale"][3]["C10"][2026112500010], 1234.5)
        self.assertNotEqual(copy["expScale"][3]["C10"][2026112500011],
                            copy["expScale"][3]["C10"][2026112500011])  # NaN survives
        self.assertEqual(copy["detScale"], scales["detScale"])


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
