# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Benchmarks of cp_flatnorm at LSSTCam scale; run with ``python -m bench.run_all [--quick]``."""
