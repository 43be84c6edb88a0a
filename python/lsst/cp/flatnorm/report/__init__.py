# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A browsable static HTML report of a flat run: `~lsst.cp.flatnorm.report.content.collect_report`
reads it from the butler, `~lsst.cp.flatnorm.report.site.write_site` writes the pages.  Needs
matplotlib (the ``report`` extra)."""

from .content import *  # noqa: F401,F403
from .site import *  # noqa: F401,F403
