# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Make and read a repository whose ``camera`` has the storage class ``Camera``, as the full stack's.

Run as a script with ``tests/afw_standin`` on ``PYTHONPATH`` (see
``tests/afw_standin/lsst/afw/cameraGeom``), in a process of its own: the test process has
daf_butler's ``Camera`` storage class without a formatter or an importable type.

``python afw_camera_repo.py create ROOT SEED`` writes the seed config, makes the repository with it
and puts the `stats_factory` statistics (seed ``SEED``) in ``test/cpFlatStatistics`` and the stand-in
camera in ``test/camera``.  ``python afw_camera_repo.py read ROOT COLLECTION`` prints the scales
that collection holds as JSON.

``python afw_camera_repo.py create-images ROOT SEED`` makes such a repository with simulated
post-ISR flats (`images_camera`, seed ``SEED``) in ``test/images`` instead of statistics, for the
whole flat chain; ``python afw_camera_repo.py read-flats ROOT COLLECTION`` prints what the flats in
that collection hold as JSON.
"""

import json
import sys

from lsst.afw.cameraGeom import camera_from_model
from lsst.cp.flatnorm.butler_setup import seed_config
from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.cp.flatnorm.sim.repo import put_images
from lsst.daf.butler import Butler, DatasetType
from flat_repo import FILTER, INSTRUMENT, fill_repo, images_camera
from stats_factory import StatisticsFactory

STATS_RUN = "test/cpFlatStatistics"
CAMERA_RUN = "test/camera"
IMAGES_RUN = "test/images"


def full_stack_seed():
    """The package's seed config, plus the JSON formatter for ``Camera`` (afw's is FITS)."""
    config = seed_config()
    # daf_butler's own definition, restated: the stand-in has the type name it needs.
    config["storageClasses", "Camera", "pytype"] = "lsst.afw.cameraGeom.Camera"
    config["datastore", "formatters", "Camera"] = "lsst.daf.butler.formatters.json.JsonFormatter"
    return config


def create(root, seed):
    config = Butler.makeRepo(root, config=full_stack_seed())
    butler = Butler.from_config(config, writeable=True)
    factory = StatisticsFactory(seed=seed)
    fill_repo(butler, factory, factory.all_pairs(), STATS_RUN, camera_storage_class="Camera")
    butler.registry.registerRun(CAMERA_RUN)
    butler.put(camera_from_model(factory.camera), "camera", instrument=INSTRUMENT, run=CAMERA_RUN)


def create_images(root, seed):
    config = Butler.makeRepo(root, config=full_stack_seed())
    butler = Butler.from_config(config, writeable=True)
    camera = images_camera()
    config = FlatSimConfig(n_exposures=4, seed=seed, dead_amplifier=None, shadow=None, saturation=None,
                           physical_filter=FILTER)
    simulator = FlatSimulator(camera, config)
    SimFlatCam(camera=camera).register(butler.registry)
    insert_exposure_records(butler, INSTRUMENT, simulator.exposures)
    put_images(butler, simulator, INSTRUMENT, IMAGES_RUN)
    butler.registry.registerDatasetType(DatasetType("camera", ("instrument",), "Camera",
                                                    universe=butler.dimensions, isCalibration=True))
    butler.registry.registerRun(CAMERA_RUN)
    butler.put(camera_from_model(camera), "camera", instrument=INSTRUMENT, run=CAMERA_RUN)


def read_flats(root, collection):
    butler = Butler.from_config(root, collections=collection)
    flats = {}
    for ref in butler.query_datasets("flat", instrument=INSTRUMENT, physical_filter=FILTER):
        flat = butler.get(ref)
        n_inputs = flat.metadata["CP_COMBINE_N_INPUTS"]
        flats[ref.dataId["detector"]] = {
            "n_vignetted": int(flat.mask.get("VIGNETTED").sum()),
            "inputs": [flat.metadata[f"CP_COMBINE_INPUT_{i}"] for i in range(n_inputs)],
        }
    json.dump(flats, sys.stdout)


def read(root, collection):
    butler = Butler.from_config(root, collections=collection)
    scales = butler.get("cpFlatNormalizeScales", instrument=INSTRUMENT, physical_filter=FILTER)
    camera = butler.get("camera", instrument=INSTRUMENT, collections=CAMERA_RUN)
    json.dump({"cameraType": f"{type(camera).__module__}.{type(camera).__name__}", "scales": scales},
              sys.stdout)


if __name__ == "__main__":
    command, root, argument = sys.argv[1:]
    if command == "create":
        create(root, int(argument))
    elif command == "create-images":
        create_images(root, int(argument))
    elif command == "read-flats":
        read_flats(root, argument)
    else:
        read(root, argument)
