# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Where the time of a ``bps submit`` through ctrl_bps_parsl goes, read from parsl's logs.

From ``<run_dir>/parsl.log`` (the DataFlowKernel: start, scale-out, which task went to which
executor task and log file, scale-in), ``<run_dir>/<executor>/interchange.log`` (when the worker
pool registered) and the worker logs (when each job was received and completed on a worker), and
from the job logs themselves (the pipetask log lines and the quanta's own ``took N seconds``):

- ``start_up``: from the DataFlowKernel's start to the first job received by a worker, split into
  ``to_scale_out`` (parsl's strategy poll, every 5 s, asks for the block), ``to_registration``
  (batch submission, scheduling, and the worker pool's start on the node) and ``to_first_job``;
- per job: ``wall`` (received -> completed on the worker), ``quanta`` (the sum of the quanta's own
  times), ``overhead`` (``wall - quanta``: interpreter start, imports, graph read, butler set-up,
  writing outputs, exit) and ``to_first_log`` (received -> the job's first log line);
- ``tail``: from the last job's completion to parsl's shutdown (scale-in: the block's cancellation,
  and the executor's shutdown); the final job runs after that, on the submitting machine.

``python tests/servers/bps_timeline.py RUN_DIR`` prints them.
"""

from __future__ import annotations

__all__ = ["JobTiming", "Timeline", "read_timeline"]

import dataclasses
import datetime
import re
import statistics
import sys
from pathlib import Path

_STAMP = re.compile(r"^(\d{10}\.\d+) ")
_LAUNCH = re.compile(r"Parsl task (\d+) try \d+ launched on executor (\S+) with executor id (\d+)")
_APP = re.compile(r"Task (\d+) submitted for App (\S+),")
_STDERR = re.compile(r"Standard error for task (\d+) will be redirected to (\S+)")
_WORKER = re.compile(r"(Received|Completed) executor task (\d+)")
_TOOK = re.compile(r"took (\d+(?:\.\d+)?) seconds")
_ISO = re.compile(r"^\w+ (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+[+-]\d\d:\d\d) ")


@dataclasses.dataclass
class JobTiming:
    """One BPS job (parsl task) as it ran on a worker."""

    app: str
    log: Path
    received: float
    completed: float
    quanta: float
    n_quanta: int
    first_log: float

    @property
    def wall(self) -> float:
        return self.completed - self.received

    @property
    def overhead(self) -> float:
        return self.wall - self.quanta

    @property
    def to_first_log(self) -> float:
        return self.first_log - self.received


@dataclasses.dataclass
class Timeline:
    """The phases of one parsl run (times are seconds since the epoch, durations seconds)."""

    executor: str
    dfk_start: float
    scale_out: float
    registrations: list[float]
    jobs: list[JobTiming]
    cleaned_up: float

    @property
    def to_scale_out(self) -> float:
        return self.scale_out - self.dfk_start

    @property
    def to_registration(self) -> float:
        return self.registrations[0] - self.scale_out

    @property
    def to_first_job(self) -> float:
        return min(job.received for job in self.jobs) - self.registrations[0]

    @property
    def start_up(self) -> float:
        return min(job.received for job in self.jobs) - self.dfk_start

    @property
    def tail(self) -> float:
        return self.cleaned_up - max(job.completed for job in self.jobs)

    def summary(self) -> str:
        if not self.jobs:
            return f"executor {self.executor or '(none)'}: no job ran"
        overheads = [job.overhead for job in self.jobs]
        lines = [
            f"executor {self.executor}: start-up {self.start_up:.1f} s = to scale-out "
            f"{self.to_scale_out:.1f} + to worker registration {self.to_registration:.1f} + to first job "
            f"{self.to_first_job:.1f}; tail {self.tail:.1f} s",
            f"per-job overhead: median {statistics.median(overheads):.1f} s, "
            f"min {min(overheads):.1f}, max {max(overheads):.1f} ({len(self.jobs)} jobs)",
        ]
        for job in sorted(self.jobs, key=lambda job: job.received):
            lines.append(f"  {job.log.stem:<40} wall {job.wall:5.1f} s, {job.n_quanta:3d} quanta "
                         f"{job.quanta:5.1f} s, overhead {job.overhead:5.1f} s, first log after "
                         f"{job.to_first_log:5.1f} s")
        return "\n".join(lines)


def _stamped_lines(path: Path):
    for line in path.read_text(errors="replace").splitlines():
        if match := _STAMP.match(line):
            yield float(match.group(1)), line


def _job_log(path: Path) -> tuple[float, int, float]:
    """Sum of the quanta's own times, their number, and the time of the first log line."""
    took, first = [], float("nan")
    for line in path.read_text(errors="replace").splitlines():
        if (match := _ISO.match(line)) and first != first:  # first is NaN until set
            first = datetime.datetime.fromisoformat(match.group(1)).timestamp()
        if "Execution of task" in line and (match := _TOOK.search(line)):
            took.append(float(match.group(1)))
    return sum(took), len(took), first


def read_timeline(run_dir: str | Path) -> Timeline:
    """Read the timeline of the parsl run whose ``run_dir`` (``runinfo/NNN``) is given."""
    run_dir = Path(run_dir)
    dfk_start = scale_out = cleaned_up = float("nan")
    apps, stderr, executor_ids, executor = {}, {}, {}, ""
    for stamp, line in _stamped_lines(run_dir / "parsl.log"):
        if "Starting DataFlowKernel" in line:
            dfk_start = stamp
        elif "Scaling out by" in line and scale_out != scale_out:
            scale_out = stamp
        elif "Workflow shutdown information" in line:
            cleaned_up = stamp
        elif match := _APP.search(line):
            apps[int(match.group(1))] = match.group(2)
        elif match := _LAUNCH.search(line):
            executor = match.group(2)
            executor_ids[int(match.group(3))] = int(match.group(1))
        elif match := _STDERR.search(line):
            stderr[int(match.group(1))] = Path(match.group(2))
    if not executor:  # no job was launched (all were done by an earlier run, or none could start)
        return Timeline(executor, dfk_start, scale_out, [], [], cleaned_up)
    registrations = sorted(stamp for stamp, line in _stamped_lines(run_dir / executor / "interchange.log")
                           if "Registered manager" in line)
    received, completed = {}, {}
    for worker_log in (run_dir / executor).glob("block-*/*/worker_*.log"):
        for stamp, line in _stamped_lines(worker_log):
            if match := _WORKER.search(line):
                (received if match.group(1) == "Received" else completed)[int(match.group(2))] = stamp
    jobs = []
    for executor_id, task in sorted(executor_ids.items()):
        if executor_id not in completed:
            continue
        quanta, n_quanta, first_log = _job_log(stderr[task])
        jobs.append(JobTiming(apps[task], stderr[task], received[executor_id], completed[executor_id],
                              quanta, n_quanta, first_log))
    return Timeline(executor, dfk_start, scale_out, registrations, jobs, cleaned_up)


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(read_timeline(run).summary())
