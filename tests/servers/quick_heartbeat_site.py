# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""ctrl_bps_parsl's Slurm site with a short heartbeat, so that a fault test waits seconds, not minutes.

parsl's interchange declares a worker pool lost (``ManagerLost``) once it has missed its heartbeats
for ``heartbeat_threshold`` seconds, 120 by default, and ctrl_bps_parsl's `Slurm` site offers no
setting for it.  That wait is all that a pilot job's death costs a run, besides the jobs it was
running; `QuickHeartbeatSlurm` is that site with 10 s instead, and otherwise unchanged but for one
more setting, ``max_workers_per_node`` (parsl's; by default one worker per core): with 1, the pool
runs its BPS jobs one at a time, so that a test knows which job a fault interrupts.  A submit file
selects it with ``site: {slurm: {class: servers.quick_heartbeat_site.QuickHeartbeatSlurm}}``; the
submitting process (``bps submit`` and ``bps restart``) must find ``tests/`` on ``PYTHONPATH``.
"""

__all__ = ["QuickHeartbeatSlurm"]

from lsst.ctrl.bps.parsl.configuration import get_bps_config_value
from lsst.ctrl.bps.parsl.sites import Slurm
from parsl.executors.base import ParslExecutor

HEARTBEAT_PERIOD = 2  # seconds between heartbeats (parsl: 30)
HEARTBEAT_THRESHOLD = 10  # seconds without one before the pool's jobs fail (parsl: 120)


class QuickHeartbeatSlurm(Slurm):
    """The Slurm site whose worker pools are declared lost after `HEARTBEAT_THRESHOLD` seconds."""

    def get_executors(self) -> list[ParslExecutor]:
        options = {"heartbeat_period": HEARTBEAT_PERIOD, "heartbeat_threshold": HEARTBEAT_THRESHOLD}
        max_workers = get_bps_config_value(self.site, "max_workers_per_node", int)
        if max_workers:
            options["max_workers_per_node"] = max_workers
        return [self.make_executor("slurm", executor_options=options)]
