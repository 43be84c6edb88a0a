# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""How the post-ISR flats (``cpFlatIsrExp``) are stored: uncompressed HDF5, read in 0.1 s.

The measure and combine steps each read every post-ISR flat once, so their reading time is paid
twice per (exposure, detector): with lsst.images' default storage, tile-compressed FITS with one
GZIP tile per row, one LSSTCam detector (4072 x 4000) takes 2.3-4.4 s to read, more than all the
computing of the chain.  Measured on the benchmark machine (2 shared cores, load 4-6) for one such
detector (float32 image and variance, 5 mask planes; ``bench/README.md``, part 7, has a quieter
run: 2.28 s, 1.46 s, 0.58 s and 0.05 s):

========================================  ========  ========  ======================
storage                                   file      read      20 bands of 200 rows
========================================  ========  ========  ======================
FITS, GZIP_2, one tile per row (default)  87 MiB    4.4 s     4.8 s
FITS, GZIP_2, 100-row tiles               80 MiB    2.5 s     2.7 s
FITS, uncompressed                        186 MiB   1.1 s     1.1 s
HDF5 (NDF ``.sdf``), uncompressed         155 MiB   0.07 s    0.3 s
========================================  ========  ========  ======================

Uncompressed FITS still spends a second converting: FITS is big-endian (every array is
byte-swapped) and lsst.images stores the mask as 32-bit planes that it converts one plane at a
time.  lsst.images' HDF5 (NDF) layout keeps native arrays and the mask as it is in memory, so a
read is little more than the file read.  Lossless, and 1.8x the disk space of the default: about
155 MiB instead of 87 MiB per detector, 1.4 TiB instead of 0.8 TiB for 50 exposures of LSSTCam's
189 science detectors.  The writes are faster too (0.8 s instead of 5 s).

`PostIsrFlatFormatter` is lsst.images' formatter with HDF5 as its default format; the package's
butler seed config names it for ``cpFlatIsrExp``, which the simulator and ``cp-flatnorm ingest``
write.  It reads the FITS files of repositories made before (by their extension) as before.
"""

from __future__ import annotations

__all__ = ["PostIsrFlatFormatter"]

import errno
import functools
import os
import shutil
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from lsst.images import serialization
from lsst.images.formatters import GenericFormatter
from lsst.resources import ResourcePath, ResourcePathExpression

_HDF5_OVERHEAD = 32 * 1024
"""Bytes an HDF5 (NDF) file of a post-ISR flat takes beyond its arrays (metadata, headers), at most."""


class PostIsrFlatFormatter(GenericFormatter):
    """lsst.images' `~lsst.images.formatters.GenericFormatter` writing HDF5 (NDF, ``.sdf``) files.

    Reading a part of an image (the ``bbox`` parameter, which `CpFlatCombineTask` reads its tiles
    with) works around a bug of lsst-images 30.2026.4300: its NDF reader passes the section's
    ``YX`` named tuple to h5py, which accepts only plain tuples.
    """

    default_extension: ClassVar[str] = ".sdf"

    def write_local_file(self, in_memory_dataset: Any, uri: ResourcePath) -> None:
        """Write the file, after checking that the disk has room for it.

        HDF5 fails badly on a full disk: the library keeps the half-written file open, and the process
        crashes when it exits.  An image that cannot fit is refused before writing instead.

        Raises
        ------
        OSError
            Raised, with ``errno.ENOSPC``, naming the file and the bytes needed and free, if the file
            system cannot hold the file; nothing is written then.
        """
        if self.get_write_extension() == ".sdf":
            _check_room(uri.ospath, _array_bytes(in_memory_dataset) + _HDF5_OVERHEAD)
        super().write_local_file(in_memory_dataset, uri)

    def _read_from_resource_path(self, uri: ResourcePathExpression, component: str | None = None) -> Any:
        parameters = self._coerce_legacy_bboxes(self.file_descriptor.parameters or {})
        if component is not None or not parameters:
            return super()._read_from_resource_path(uri, component)
        # The storage class's pytype is a plain type, so the reader's type is unknown to mypy.
        with serialization.open_archive(  # type: ignore[var-annotated]
            uri, cls=self.file_descriptor.storageClass.pytype, partial=True
        ) as reader:
            self._cache_tree(reader.get_tree())
            archive = getattr(reader, "_archive", None)
            if archive is not None and hasattr(archive, "get_array"):
                archive.get_array = _plain_tuple_slices(archive.get_array)
            return reader.read(**parameters)


def _array_bytes(image: Any) -> int:
    """Bytes of the image's arrays (image, mask, variance), as the uncompressed file holds them."""
    return sum(np.asarray(getattr(image, plane).array).nbytes for plane in ("image", "mask", "variance")
               if hasattr(image, plane))


def _check_room(path: str, needed: int) -> None:
    free = shutil.disk_usage(os.path.dirname(path)).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)}: {needed} bytes needed, {free} free",
                      path)


def _plain_tuple_slices(get_array: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap an input archive's ``get_array`` so that its ``slices`` arrive as a plain tuple."""

    @functools.wraps(get_array)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        slices = kwargs.get("slices")
        if isinstance(slices, tuple) and type(slices) is not tuple:
            kwargs["slices"] = tuple(slices)
        return get_array(*args, **kwargs)

    return wrapper
