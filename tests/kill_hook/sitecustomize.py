# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Test hook, on PYTHONPATH only in the tests that interrupt a process on purpose.

``$KILL_BEFORE_PUT`` (comma-separated dataset type names) chooses the writes; ``$KILL_AFTER_PUTS``
(default 0) such writes are let through first.  (A quantum writes its outputs in no fixed order, so
"between the normalization's two writes" is the second write of either type.)  At the chosen write
the process:

- ``$KILL_WHERE=put`` (default): sends itself ``$KILL_SIGNAL`` (``TERM`` by default, or ``KILL``)
  just before its quantum context writes the dataset, as if it were killed there;
- ``$KILL_WHERE=write``: is killed in the middle of the file's write, by any writer (a quantum or
  ``cp-flatnorm ingest``): the datastore's temporary file holds half of the bytes, not yet moved to
  its final name nor registered;
- ``$KILL_WHERE=pause``: announces itself by creating ``$PAUSE_FILE.waiting.<pid>`` just before its
  quantum context writes the dataset, then waits until ``$PAUSE_FILE.go`` exists (the test injects
  its fault meanwhile) and writes it.  ``$PAUSE_AT_QUANTUM`` (a task label) instead pauses every
  quantum of that task before it reads its inputs.
"""

import os
import signal
import time
from pathlib import Path

_TARGETS = set(filter(None, os.environ.get("KILL_BEFORE_PUT", "").split(",")))
_ALLOWED = int(os.environ.get("KILL_AFTER_PUTS", "0"))
_SIGNAL = getattr(signal, "SIG" + os.environ.get("KILL_SIGNAL", "TERM"))
_WHERE = os.environ.get("KILL_WHERE", "put")
_PAUSE = os.environ.get("PAUSE_FILE", "")
_PAUSE_LABEL = os.environ.get("PAUSE_AT_QUANTUM", "")
_done = []


def _chosen(dataset_type):
    """Whether this write of ``dataset_type`` is the one to interrupt (counting the targets' writes)."""
    if dataset_type not in _TARGETS:
        return False
    chosen = len(_done) >= _ALLOWED
    _done.append(dataset_type)
    return chosen


def _pause():
    Path(f"{_PAUSE}.waiting.{os.getpid()}").touch()
    while not os.path.exists(f"{_PAUSE}.go"):
        time.sleep(0.05)


if _TARGETS and _WHERE in ("put", "pause"):
    from lsst.pipe.base import _quantumContext

    _put = _quantumContext.QuantumContext._put

    def _put_or_stop(self, value, ref):
        if _chosen(ref.datasetType.name):
            if _WHERE == "pause":
                _pause()
            else:
                os.kill(os.getpid(), _SIGNAL)
        return _put(self, value, ref)

    _quantumContext.QuantumContext._put = _put_or_stop

if _TARGETS and _WHERE == "write":
    from lsst.resources.file import FileResourcePath

    _transfer_from = FileResourcePath.transfer_from

    def _transfer_or_die(self, src, *args, **kwargs):
        # The datastore writes a dataset to a temporary file beside its final name, then moves it
        # there; its file name starts with the dataset type's name.
        dataset_type = self.basename().split("_", 1)[0]
        if os.path.exists(src.ospath) and _chosen(dataset_type):
            size = os.path.getsize(src.ospath)
            os.truncate(src.ospath, size // 2)
            os.kill(os.getpid(), _SIGNAL)
        return _transfer_from(self, src, *args, **kwargs)

    FileResourcePath.transfer_from = _transfer_or_die

if _PAUSE_LABEL:
    from lsst.pipe.base import single_quantum_executor

    _execute = single_quantum_executor.SingleQuantumExecutor._execute

    def _pause_then_execute(self, task_node, *args, **kwargs):
        if task_node.label == _PAUSE_LABEL:
            _pause()
        return _execute(self, task_node, *args, **kwargs)

    single_quantum_executor.SingleQuantumExecutor._execute = _pause_then_execute
