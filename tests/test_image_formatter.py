# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The storage of the post-ISR flats: HDF5 through PostIsrFlatFormatter, as the seed config says."""

import tempfile
import unittest

import numpy as np

import lsst.utils.tests
from lsst.cp.flatnorm.butler_setup import make_repo
from lsst.cp.flatnorm.flat_connections import POST_ISR_FLAT_DATASET_TYPE
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import MASK_PLANES, FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.daf.butler import Butler, DatasetType
from lsst.images import Box, Image, Mask, MaskedImage, MaskSchema

FORMATTER = "lsst.cp.flatnorm.image_formatter.PostIsrFlatFormatter"


def _image(shape=(37, 53), seed=2):
    """A masked image whose three planes differ everywhere, with NaN, infinities and set bits."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(1000.0, 30.0, shape).astype(np.float32)
    pixels[3, 4], pixels[5, 6] = np.nan, -np.inf
    mask = Mask(schema=MaskSchema(MASK_PLANES), bbox=Box.factory[100:100 + shape[0], 200:200 + shape[1]])
    for plane in ("BAD", "CR", "SAT"):
        mask.set(plane, rng.random(shape) < 0.1)
    variance = rng.uniform(900.0, 1100.0, shape).astype(np.float32)
    return MaskedImage(Image(pixels, yx0=(100, 200)), mask=mask, variance=Image(variance, yx0=(100, 200)),
                       metadata={"EXPTIME": 15.0})


class PostIsrFlatStorageTestCase(lsst.utils.tests.TestCase):
    def setUp(self):
        self.root = tempfile.TemporaryDirectory()
        self.addCleanup(self.root.cleanup)
        self.butler = make_repo(self.root.name)
        self.butler.registry.registerDatasetType(
            DatasetType(POST_ISR_FLAT_DATASET_TYPE, (), "MaskedImageV2", universe=self.butler.dimensions)
        )
        self.butler.registry.registerRun("run")
        self.image = _image()
        self.ref = self.butler.put(self.image, POST_ISR_FLAT_DATASET_TYPE, run="run")

    def assert_equal_images(self, got, expected):
        self.assertEqual(got.bbox, expected.bbox)
        np.testing.assert_array_equal(got.image.array, expected.image.array)  # NaN in the same places
        np.testing.assert_array_equal(got.variance.array, expected.variance.array)
        np.testing.assert_array_equal(got.mask.array, expected.mask.array)
        self.assertEqual(list(got.mask.schema.names), list(expected.mask.schema.names))

    def test_seed_config_stores_hdf5(self):
        self.assertTrue(self.butler.getURI(self.ref).path.endswith(".sdf"))
        stored = self.butler._datastore.getStoredItemsInfo(self.ref)
        self.assertEqual([info.formatter for info in stored], [FORMATTER])

    def test_lossless_round_trip(self):
        copy = Butler.from_config(self.root.name, collections="run").get(self.ref)
        self.assert_equal_images(copy, self.image)
        self.assertEqual(copy.metadata["EXPTIME"], 15.0)

    def test_sections_and_components(self):
        # The combine reads tiles with the bbox parameter; lsst-images' own NDF reader fails there.
        for box in (Box.factory[100:110, 200:253], Box.factory[120:137, 230:240], self.image.bbox):
            with self.subTest(box=str(box)):
                self.assert_equal_images(self.butler.get(self.ref, parameters={"bbox": box}),
                                         self.image[box])
        self.assertEqual(self.butler.get(self.ref.makeComponentRef("bbox")), self.image.bbox)
        np.testing.assert_array_equal(self.butler.get(self.ref.makeComponentRef("image")).array,
                                      self.image.image.array)

    def test_simulated_repository_writes_hdf5(self):
        camera = make_sim_camera(n_side=1, amp_width=8, amp_height=6, n_wavefront=0)
        with tempfile.TemporaryDirectory() as root:
            config = FlatSimConfig(n_exposures=2, dead_amplifier=None, shadow=None, saturation=None)
            repo = build_sim_repo(root, camera=camera, config=config)
            refs = repo.butler.query_datasets(POST_ISR_FLAT_DATASET_TYPE, collections=repo.image_run)
            self.assertEqual(len(refs), 2)
            for ref in refs:
                self.assertTrue(repo.butler.getURI(ref).path.endswith(".sdf"))
                expected = repo.simulator.make_image(ref.dataId["exposure"], ref.dataId["detector"])
                self.assert_equal_images(repo.butler.get(ref), expected)


class MemoryTestCase(lsst.utils.tests.MemoryTestCase):
    pass


def setup_module(module):
    lsst.utils.tests.init()


if __name__ == "__main__":
    lsst.utils.tests.init()
    unittest.main()
