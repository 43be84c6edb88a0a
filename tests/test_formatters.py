# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The YAML formatter the seed config declares for StructuredDataDict, and its block writer."""

import math
import tempfile
import unittest

import numpy as np
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.formatters import block_yaml
from lsst.daf.butler import Butler, DatasetType


class BlockYamlFormatterTestCase(lsst.utils.tests.TestCase):
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
                             ["lsst.cp.flatnorm.formatters.BlockYamlFormatter"])
            copy = Butler.from_config(root, collections="run").get("scales", instrument="SimFlatCam")
        self.assertEqual(list(copy["expScale"][3]["C10"]), [2026112500010, 2026112500011])
        self.assertEqual(copy["expScale"][3]["C10"][2026112500010], 1234.5)
        self.assertNotEqual(copy["expScale"][3]["C10"][2026112500011],
                            copy["expScale"][3]["C10"][2026112500011])  # NaN survives
        self.assertEqual(copy["detScale"], scales["detScale"])


def _trees(strings):
    keys = st.one_of(st.integers(-10**15, 10**15), strings, st.booleans(), st.floats(allow_nan=False),
                     st.none())
    leaves = st.one_of(st.floats(), st.integers(), st.booleans(), st.none(), keys)
    return st.dictionaries(keys, st.recursive(leaves, lambda children: st.dictionaries(keys, children),
                                              max_leaves=20), max_size=6)


# Strings block_yaml must write itself: printable ASCII without spaces, including ones that YAML
# would resolve to other types unless quoted.
_WORDS = st.one_of(
    st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12),
    st.sampled_from(["null", "true", "on", "~", "123", "1e5", "0x1F", "1:20", "-", "#x", "C10", "a'b"]),
)


class BlockYamlTestCase(lsst.utils.tests.TestCase):
    """`block_yaml` must write exactly PyYAML's text, or decline."""

    @settings(max_examples=150, deadline=None)
    @given(_trees(_WORDS))
    def test_same_text_as_pyyaml(self, tree):
        self.assertEqual(block_yaml(tree), yaml.safe_dump(tree, sort_keys=False))

    @settings(max_examples=100, deadline=None)
    @given(_trees(st.text(max_size=90)))
    def test_any_text_is_pyyaml_text_or_declined(self, tree):
        text = block_yaml(tree)
        if text is not None:
            self.assertEqual(text, yaml.safe_dump(tree, sort_keys=False))

    def test_scale_layout_round_trips(self):
        scales = {
            "expScale": {0: {"C00": {2026112500010: 1234.5, 2026112500011: float("nan")}, "C01": {}}},
            "detScale": {0: {"C00": 1e-300, "C01": -math.inf, "C02": 1e16, "C03": -0.0}},
        }
        text = block_yaml(scales)
        self.assertIn("C02: 1.0e+16\n", text)  # YAML 1.1 would read "1e+16" as a string
        self.assertIn("C01: -.inf\n", text)
        copy = yaml.safe_load(text)
        self.assertTrue(math.isnan(copy["expScale"][0]["C00"].pop(2026112500011)))
        del scales["expScale"][0]["C00"][2026112500011]
        self.assertEqual(copy, scales)

    def test_declines_what_pyyaml_writes_otherwise(self):
        shared = {"a": 1.0}
        for tree in ([1.0], {"a": [1.0]}, {"a b": 1.0}, {"a": "two words"}, {"": 1}, {"a": "x" * 101},
                     {"a": "\u0100"}, {"a": np.float64(1.0)}, {(1, 2): 1.0}, {"x": shared, "y": shared}):
            with self.subTest(tree=tree):
                self.assertIsNone(block_yaml(tree))


class MemoryTester(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
