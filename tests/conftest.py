# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Hand the slow modules out first.

``pytest -n 2 --dist loadfile --no-loadscope-reorder`` (the Makefile) gives each worker whole
modules in collection order.  The modules marked ``slow`` (a repository and pipetask runs, a wheel
installed in a fresh environment, a bps submission) take minutes each, the others seconds: started
last, one slow module would run alone at the end while the other worker idles.
"""

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the items of slow modules first, keeping the order within each group (a stable sort)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
