# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Butler repository configuration that the package's datasets need."""

from __future__ import annotations

__all__ = ["SEED_CONFIG_PATH", "seed_config", "make_repo", "no_new_empty_directories"]

import contextlib
import os
from collections.abc import Iterator
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


@contextlib.contextmanager
def no_new_empty_directories(butler: Butler) -> Iterator[None]:
    """Remove, if the block raises, the empty directories it left in the butler's local datastores.

    A rolled-back transaction removes the files it wrote, but not the directories made for them.
    """
    roots = [root.ospath for root in butler.get_datastore_roots().values()
             if root is not None and root.isLocal]
    before = {path for root in roots for path in _directories(root)}
    try:
        yield
    except BaseException:
        for root in roots:
            for path in sorted(set(_directories(root)) - before, reverse=True):  # children first
                with contextlib.suppress(OSError):  # not empty: something was written there
                    os.rmdir(path)
        raise


def _directories(root: str) -> list[str]:
    return [directory for directory, _, _ in os.walk(root)]
