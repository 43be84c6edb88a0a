# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Hand the slow modules out first; read the installed distributions once per test process.

``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (the Makefile) gives each worker whole
modules in collection order.  The modules marked ``slow`` (a repository and pipetask runs, a wheel
installed in a fresh environment, a bps submission) take minutes each, the others seconds: started
last, one slow module would run alone at the end while the other worker idles.
"""

import functools
import importlib.metadata

import pytest

import lsst.utils.packages

# The middleware records the versions of the imported packages at every pipeline run and graph
# build (lsst.utils.packages.getPythonPackages), and each time it maps import names to distributions
# by reading the metadata of every installed distribution (importlib.metadata.packages_distributions:
# about 0.5 s of CPU, a sixth of a small module's pipeline runs).  No distribution is installed
# into this environment during a test session, so the map is read once per process; the versions
# recorded are the same.
lsst.utils.packages.packages_distributions = functools.cache(importlib.metadata.packages_distributions)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the items of slow modules first, keeping the order within each group (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
