# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Make and read a repository whose ``camera`` has the storage class ``Camera``, as the full stack's.

Run as a script with ``tests/afw_standin`` on ``PYTHONPATH`` (see
``tests/afw_standin/lsst/afw/cameraGeom``), in a process of its own: the test process has
daf_butler's ``Camera`` storage class without a formatter or an importable type.

``python afw_camera_repo.py ROOT SEED KIND STEPS`` makes the repository and runs ``STEPS`` (JSON) on
it in that one process, printing a JSON list of their results.  ``KIND`` ``create`` puts the
`stats_factory` statistics (seed ``SEED``) in ``test/cpFlatStatistics`` and the stand-in camera in
``test/camera``; ``create-images`` puts simulated post-ISR flats (`images_camera`, seed ``SEED``) in
``test/images`` instead of statistics, for the whole flat chain.  A step is ``["pipetask", *args]``
(the command line run in this process: its ``returncode``, ``stdout`` and ``stderr``), ``["read",
COLLECTION]`` (the scales that collection holds) or ``["read-flats", COLLECTION]`` (what the flats
in that collection hold).
"""

import json
import sys
import traceback

from lsst.afw.cameraGeom import camera_from_model
from lsst.cp.flatnorm.butler_setup import seed_config
from lsst.cp.flatnorm.exposure_records import insert_exposure_records
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig, FlatSimulator
from lsst.cp.flatnorm.sim.instrument import SimFlatCam
from lsst.cp.flatnorm.sim.repo import put_images
from lsst.daf.butler import Butler, DatasetType
from flat_repo import FILTER, INSTRUMENT, fill_repo, images_camera
from pipetask_in_process import pipetask
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
    return flats


def read(root, collection):
    butler = Butler.from_config(root, collections=collection)
    scales = butler.get("cpFlatNormalizeScales", instrument=INSTRUMENT, physical_filter=FILTER)
    camera = butler.get("camera", instrument=INSTRUMENT, collections=CAMERA_RUN)
    return {"cameraType": f"{type(camera).__module__}.{type(camera).__name__}", "scales": scales}


def run_pipetask(*args):
    process = pipetask(*args)
    return {"returncode": process.returncode, "stdout": process.stdout, "stderr": process.stderr}


STEPS = {"pipetask": run_pipetask, "read": read, "read-flats": read_flats}

if __name__ == "__main__":
    root, seed, kind, steps = sys.argv[1:]
    {"create": create, "create-images": create_images}[kind](root, int(seed))
    results = []
    for name, *args in json.loads(steps):
        try:
            results.append(STEPS[name](*args) if name == "pipetask" else STEPS[name](root, *args))
        except Exception:  # the test shows it, beside the other steps' results
            results.append({"error": traceback.format_exc()})
    print(json.dumps(results))
