# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The scale-dictionary formatter under its pre-0.2 path and name.

Datastore records store the formatter's class path, so files that repositories created before
0.2 wrote with ``lsst.cp.pipe.formatters.LibyamlFormatter`` are read through this alias.
"""

__all__ = ["LibyamlFormatter"]

from lsst.cp.flatnorm.formatters import BlockYamlFormatter as LibyamlFormatter
