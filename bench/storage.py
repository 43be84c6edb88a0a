# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmark 7: how the post-ISR flats (``cpFlatIsrExp``) are stored, and how fast they read back.

One post-ISR flat of an LSSTCam detector (4072 x 4000: float32 image at 50,000 electrons with
Poisson noise, its variance computed from the noisy values as ISR computes it, and a mask with the
simulator's five planes, defect columns and cosmic rays set) is put into an on-disk repository in
four ways, each under its own dataset type:

- FITS, GZIP_2 with one tile per row: lsst.images' default, what the package wrote before;
- FITS, GZIP_2 with 100-row tiles (a write recipe);
- FITS, uncompressed (lsst.images' formatter with its compression options set to none);
- HDF5 (lsst.images' NDF ``.sdf`` layout), uncompressed: `PostIsrFlatFormatter`, the package's
  choice, which its butler seed config names for ``cpFlatIsrExp``.

For each: the file size, the time of the ``butler.put``, of a ``butler.get`` of the whole image (as
the measure step reads it; median of ``REPEATS``) and of the 20 ``butler.get`` of 200-row bands that
read it whole in the combine's default tiles (median of 2).  Every read is checked to be lossless.
"""

from __future__ import annotations

__all__ = ["StorageResult", "UncompressedFitsFormatter", "post_isr_flat", "run"]

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from lsst.cp.flatnorm.butler_setup import seed_config
from lsst.cp.flatnorm.sim.flat_simulator import MASK_PLANES
from lsst.daf.butler import Butler, DatasetType
from lsst.images import Box, Image, Mask, MaskedImage, MaskSchema
from lsst.images.formatters import GenericFormatter

from .timing import format_seconds

REPEATS = 3
_BAND_ROWS = 200
_GOAL = 0.5  # seconds to read one LSSTCam detector


class UncompressedFitsFormatter(GenericFormatter):
    """lsst.images' formatter writing FITS without compression (its recipes cannot say "none")."""

    def _get_compression_options(self) -> dict[str, Any]:
        return {"image": None, "mask": None, "variance": None}


STORAGES = {
    "FITS, GZIP_2, a tile per row (lsst.images' default; before)": (
        "benchFitsRowTiles", "lsst.images.formatters.GenericFormatter", None),
    "FITS, GZIP_2, 100-row tiles": (
        "benchFitsTiles", "lsst.images.formatters.GenericFormatter", "rows100"),
    "FITS, uncompressed": ("benchFitsPlain", "bench.storage.UncompressedFitsFormatter", None),
    "HDF5 (NDF), uncompressed (the package's choice)": (
        "benchHdf5", "lsst.cp.flatnorm.image_formatter.PostIsrFlatFormatter", None),
}
"""Label: (dataset type, formatter, write recipe)."""


def post_isr_flat(shape: tuple[int, int], seed: int = 7) -> MaskedImage:
    """A post-ISR flat like ISR's output (see the module docstring)."""
    rng = np.random.default_rng(seed)
    signal = 50_000.0 * (1.0 + 0.02 * rng.standard_normal(shape[1]))[np.newaxis, :]
    pixels = rng.poisson(np.broadcast_to(signal, shape)) + 5.0 * rng.standard_normal(shape)
    mask = Mask(schema=MaskSchema(MASK_PLANES), shape=shape)
    defects = np.zeros(shape, dtype=bool)
    defects[:, rng.choice(shape[1], 3, replace=False)] = True
    mask.set("BAD", defects)
    mask.set("CR", rng.random(shape) < 2e-5)
    variance = np.maximum(pixels, 0.0) + 25.0
    return MaskedImage(Image(pixels.astype(np.float32)), mask=mask,
                       variance=Image(variance.astype(np.float32)))


@dataclass
class _Timing:
    size: int
    write: float
    reads: list[float]
    bands: list[float]


@dataclass
class StorageResult:
    """File sizes and read/write times of each storage."""

    shape: tuple[int, int]
    timings: dict[str, _Timing]
    quick: bool = False

    def report(self) -> list[str]:
        """Lines summarising the benchmark, with the read-time goal met or missed."""
        label = f"storage {self.shape[1]}x{self.shape[0]}"
        before = self.timings[next(iter(STORAGES))]
        lines = []
        for name, timing in self.timings.items():
            read = statistics.median(timing.reads)
            speed = statistics.median(before.reads) / read
            lines.append(f"{label}: {name}: {timing.size / 2**20:.1f} MiB ({timing.size / before.size:.2f}x "
                         f"the default), write {format_seconds(timing.write)}, read {format_seconds(read)} "
                         f"({speed:.1f}x the default's speed), {self.shape[0] // _BAND_ROWS} bands of "
                         f"{_BAND_ROWS} rows {format_seconds(statistics.median(timing.bands))}")
        chosen = self.timings[list(STORAGES)[-1]]
        read = statistics.median(chosen.reads)
        verdict = "not judged in a quick run" if self.quick else "met" if read <= _GOAL else "MISSED"
        lines.append(f"{label}: the package's storage reads a detector in {format_seconds(read)} (goal <= "
                     f"{_GOAL} s for LSSTCam: {verdict}), losslessly, at "
                     f"{chosen.size / before.size:.2f}x the disk of the default")
        return lines


def _repo(root: str) -> Butler:
    config = seed_config()
    for dataset_type, formatter, recipe in STORAGES.values():
        entry: dict[str, Any] = {"formatter": formatter}
        if recipe is not None:
            entry["parameters"] = {"recipe": recipe}
        config["datastore", "formatters", dataset_type] = entry
    recipe = {plane: {"algorithm": "GZIP_2", "tile_shape": [100, 4072]}
              for plane in ("image", "mask", "variance")}
    config["datastore", "formatters", "write_recipes", "lsst.images.formatters.GenericFormatter",
           "rows100"] = recipe
    Butler.makeRepo(root, config=config)
    butler = Butler.from_config(root, writeable=True, run="bench/storage")
    for dataset_type, _, _ in STORAGES.values():
        butler.registry.registerDatasetType(DatasetType(dataset_type, (), "MaskedImageV2",
                                                        universe=butler.dimensions))
    return butler


def _same(image: MaskedImage, expected: MaskedImage) -> bool:
    return (np.array_equal(image.image.array, expected.image.array, equal_nan=True)
            and np.array_equal(image.variance.array, expected.variance.array, equal_nan=True)
            and np.array_equal(image.mask.array, expected.mask.array))


def run(quick: bool) -> list[StorageResult]:
    """Run the benchmark on an LSSTCam-sized detector, or a small image if ``quick``."""
    shape = (400, 512) if quick else (4000, 4072)
    image = post_isr_flat(shape)
    timings = {}
    with tempfile.TemporaryDirectory(prefix="cp_flatnorm_bench_") as root:
        butler = _repo(os.path.join(root, "repo"))
        for name, (dataset_type, _, _) in STORAGES.items():
            start = time.perf_counter()
            ref = butler.put(image, dataset_type)
            write = time.perf_counter() - start
            reads, bands = [], []
            for _ in range(REPEATS):
                start = time.perf_counter()
                copy = butler.get(ref)
                reads.append(time.perf_counter() - start)
                if not _same(copy, image):
                    raise RuntimeError(f"{name}: the image read back differs from the one written.")
            for _ in range(2):
                start = time.perf_counter()
                parts = [butler.get(ref, parameters={"bbox": Box.factory[top:top + _BAND_ROWS, 0:shape[1]]})
                         for top in range(0, shape[0], _BAND_ROWS)]
                bands.append(time.perf_counter() - start)
            if not all(_same(part, image[part.bbox]) for part in parts):
                raise RuntimeError(f"{name}: a band read back differs from the image written.")
            timings[name] = _Timing(size=os.path.getsize(butler.getURI(ref).ospath), write=write, reads=reads,
                                    bands=bands)
    return [StorageResult(shape=shape, timings=timings, quick=quick)]
