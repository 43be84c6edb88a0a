# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Butler repository configuration that the package's datasets need."""

from __future__ import annotations

__all__ = ["SEED_CONFIG_PATH", "seed_config", "make_repo"]

import os
from importlib import resources

from lsst.daf.butler import Butler, Config

SEED_CONFIG_PATH = str(resources.files("lsst.cp.flatnorm") / "configs" / "butler-seed.yaml")


def seed_config() -> Config:
    """Return the seed config declaring the ``CameraModel`` storage class."""
    return Config(SEED_CONFIG_PATH)


def make_repo(root: str | os.PathLike[str], *, overwrite: bool = False) -> Butler:
    """Create an on-disk (file datastore, SQLite registry) repo that knows the package's datasets.

    Parameters
    ----------
    root : `str` or `os.PathLike`
        Directory of the new repository.
    overwrite : `bool`, optional
        Passed to `lsst.daf.butler.Butler.makeRepo`.

    Returns
    -------
    butler : `lsst.daf.butler.Butler`
        A writeable butler for the new repository.
    """
    config = Butler.makeRepo(str(root), config=seed_config(), overwrite=overwrite)
    return Butler.from_config(config, writeable=True)
