# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Run a test case's ``check_*`` methods as the subtests of one test.

A class whose setup is a repository and pipetask runs gives pytest one item, so that its setup
runs once: a pytest-xdist worker may tear a class down between two of its items when its queue
of items runs short, and set it up again for the next.
"""


def run_check_methods(case):
    """Run every ``check_*`` method of the `unittest.TestCase` ``case``, in name order, each as a
    subtest named after it."""
    for name in sorted(name for name in dir(case) if name.startswith("check_")):
        with case.subTest(name):
            getattr(case, name)()
