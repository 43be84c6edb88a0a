# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Build an expensive module fixture once per test process.

Under pytest-xdist a worker may tear a module's fixtures down between two of its items when its
queue of items runs short (it does not know the next item yet), and build them again for the
next one: for a fixture that runs pipetask on a repository that doubled the module's time.  A
fixture wrapped by `built_once` keeps its value for the worker's lifetime instead; its files live
under pytest's base temporary directory, which pytest removes itself.
"""

import functools


def built_once(build):
    """Wrap a fixture function taking ``tmp_path_factory`` so that it runs once per process.

    Use below ``@pytest.fixture(scope="module")``. A skip or failure is not cached.
    """
    values = {}

    @functools.wraps(build)
    def fixture(tmp_path_factory):
        if "value" not in values:
            values["value"] = build(tmp_path_factory)
        return values["value"]

    return fixture
