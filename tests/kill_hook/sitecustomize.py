# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Test hook, on PYTHONPATH only in the tests that kill pipetask on purpose: the process sends
itself SIGTERM just before its quantum context writes a dataset of one of the types in
``$KILL_BEFORE_PUT`` (comma-separated), after letting ``$KILL_AFTER_PUTS`` (default 0) such writes
through, as if it were killed there.  (A quantum writes its outputs in no fixed order, so "between
the normalization's two writes" is the second write of either type.)"""

import os
import signal

_TARGETS = set(filter(None, os.environ.get("KILL_BEFORE_PUT", "").split(",")))
_ALLOWED = int(os.environ.get("KILL_AFTER_PUTS", "0"))

if _TARGETS:
    from lsst.pipe.base import _quantumContext

    _put = _quantumContext.QuantumContext._put
    _done = []

    def _put_or_die(self, value, ref):
        if ref.datasetType.name in _TARGETS:
            if len(_done) >= _ALLOWED:
                os.kill(os.getpid(), signal.SIGTERM)
            _done.append(ref.datasetType.name)
        return _put(self, value, ref)

    _quantumContext.QuantumContext._put = _put_or_die
