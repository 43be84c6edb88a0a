# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""A throwaway single-node Slurm cluster on loopback, for tests.

`SlurmCluster.start` writes a munge key and a minimal ``slurm.conf`` in a new temporary directory,
and runs ``munged``, ``slurmctld`` and ``slurmd`` in the foreground as this user, on free loopback
ports, until the node is idle. The configuration suits a container (no cgroups, no systemd, no
accounting database): ``ProctrackType=proctrack/linuxproc`` (a job's processes are found through
their parents), ``TaskPlugin=task/none``, ``JobAcctGatherType=jobacct_gather/none``,
``AccountingStorageType=accounting_storage/none``, ``SelectType=select/cons_tres`` on cores.
Client commands find the cluster through ``SLURM_CONF``, and the munge socket through
``AuthInfo`` in it: pass `SlurmCluster.env` to them (it is the whole environment, plus those).

Every process the cluster starts, batch jobs included (``sbatch`` exports the submitter's
environment), carries the variable ``CP_FLATNORM_SLURM=<directory>`` that `env` holds, which is how
`SlurmCluster.leftovers` finds what is still running. `SlurmCluster.stop` cancels the jobs, stops
the daemons by PID and returns whatever was left (then killed).

Run ``python tests/servers/slurm.py`` to start one by hand; it prints ``export SLURM_CONF=...``
and waits for Ctrl-C.
"""

from __future__ import annotations

__all__ = ["BINARIES", "PACKAGES", "SlurmCluster", "skip_reason"]

import atexit
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    import sys

    sys.path.insert(0, str(Path(__file__).parents[1]))

from servers import debian
from servers.processes import Daemon, free_port, start_service, tagged_processes, wait_until

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
"""Debian's Slurm (22.05 on Debian 12) and munge."""
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
TAG = "CP_FLATNORM_SLURM"
_START_TIMEOUT = 60.0


def skip_reason() -> str | None:
    """`None` if the Slurm and munge binaries are there (installed now if absent and installable),
    else a one-line reason to skip."""
    reason = debian.require(BINARIES, PACKAGES)
    if reason is None and not Path("/proc").is_dir():
        return "needs /proc to find the cluster's processes"
    return reason


def _memory_mb() -> int:
    """Most of this machine's memory (MB), as the node's RealMemory (slurmd drains a node that
    claims more than it has)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(int(line.split()[1]) / 1024 * 0.9)
    return 1024


class SlurmCluster:
    """A running single-node cluster (use `start`).

    Attributes
    ----------
    root : `pathlib.Path`
        Temporary directory: ``slurm.conf``, the munge key and socket, state, spool and logs.
    env : `dict` [`str`, `str`]
        Environment for client commands and submitters: ``SLURM_CONF`` and the tag added.
    partition, node : `str`
        The (default) partition and its one node.
    cpus : `int`
        CPUs of the node.
    startup_seconds : `float`
        Wall time from the first daemon's start to the idle node.
    """

    partition = "cpflat"
    node = "cpflat-node"

    def __init__(self, root: Path, cpus: int):
        self.root = root
        self.cpus = cpus
        self.conf = root / "slurm.conf"
        self.tag = f"{TAG}={root}"
        self.env = dict(os.environ, SLURM_CONF=str(self.conf), **{TAG: str(root)})
        self.daemons: list[Daemon] = []
        self.baseline: set[int] = set()
        self.startup_seconds = float("nan")

    @classmethod
    def start(cls, cpus: int | None = None) -> SlurmCluster:
        """Configure and start munged, slurmctld and slurmd; return when the node is idle."""
        reason = skip_reason()
        if reason:
            raise RuntimeError(f"Slurm is not available: {reason}")
        root = Path(tempfile.mkdtemp(prefix="cp_flatnorm_slurm_"))
        root.chmod(0o755)  # munged wants its socket's directory searchable by everyone
        cluster = cls(root, cpus or os.cpu_count() or 1)
        cluster.startup_seconds = start_service(cluster, cluster._configure, cluster._run)
        cluster.baseline = {pid for pid, _ in tagged_processes(cluster.tag)}
        return cluster

    def _configure(self) -> None:
        root = self.root
        for name in ("state", "spool", "munge"):
            (root / name).mkdir()
        (root / "munge").chmod(0o700)
        key = root / "munge" / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        user = pwd.getpwuid(os.geteuid()).pw_name
        self.conf.write_text(f"""\
# A single-node cluster on loopback for cp_flatnorm's tests (tests/servers/slurm.py).
ClusterName=cpflat
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
MailProg=/bin/true
# Container-friendly: no cgroups, no accounting daemon.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
# Keep finished jobs' records (StartTime, EndTime) for scontrol for 10 minutes.
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={_memory_mb()} State=UNKNOWN
PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")

    def _run(self) -> None:
        root = self.root
        munged = Daemon("munged", [
            debian.which("munged"), "--foreground", "--force", f"--key-file={root}/munge/munge.key",
            f"--socket={root}/munge.socket", f"--pid-file={root}/munge/munged.pid",
            f"--seed-file={root}/munge/munged.seed", f"--log-file={root}/munge/munged.log",
        ], root / "munged.out", env=self.env)
        self.daemons.append(munged)
        self._wait("munged", munged, lambda: (root / "munge.socket").exists())
        ctld = Daemon("slurmctld", [debian.which("slurmctld"), "-D", "-f", str(self.conf)],
                      root / "slurmctld.out", env=self.env)
        self.daemons.append(ctld)
        self._wait("slurmctld", ctld, lambda: self.client("scontrol", "ping").returncode == 0)
        slurmd = Daemon("slurmd", [debian.which("slurmd"), "-D", "-N", self.node, "-f", str(self.conf)],
                        root / "slurmd.out", env=self.env)
        self.daemons.append(slurmd)
        self._wait("slurmd", slurmd, lambda: self.node_state() == "idle")

    def _wait(self, name: str, daemon: Daemon, ready) -> None:
        if wait_until(lambda: not daemon.alive() or ready(), _START_TIMEOUT) and daemon.alive():
            return
        logs = "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-1500:]}"
                         for path in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.out")))
        raise RuntimeError(f"{name} did not become ready in {_START_TIMEOUT:.0f} s:\n{logs}")

    def client(self, command: str, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        """Run a Slurm client command (``squeue``, ``scontrol``...) against this cluster."""
        return subprocess.run([debian.which(command), *args], env=self.env, capture_output=True, text=True,
                              timeout=60, check=check)

    def node_state(self) -> str:
        result = self.client("sinfo", "-h", "-N", "-n", self.node, "-o", "%T")
        return result.stdout.strip() if result.returncode == 0 else ""

    def jobs(self) -> list[tuple[str, str, str]]:
        """Jobs in the queue: (job ID, name, state)."""
        result = self.client("squeue", "-h", "-o", "%i|%j|%T", check=True)
        return [tuple(line.split("|")) for line in result.stdout.splitlines() if line.strip()]

    def job_times(self, job_id: str) -> dict[str, str]:
        """SubmitTime, StartTime, EndTime (and the rest of ``scontrol show job``) of a job, finished
        ones included for ``MinJobAge``."""
        result = self.client("scontrol", "-o", "show", "job", job_id)
        return dict(item.split("=", 1) for item in result.stdout.split() if "=" in item)

    def leftovers(self) -> list[tuple[int, str]]:
        """Processes of the cluster other than its daemons: job steps, job scripts, and what they
        started (``slurmstepd``, parsl's worker pools and workers, pipetask)."""
        return [(pid, command) for pid, command in tagged_processes(self.tag) if pid not in self.baseline
                and pid not in {daemon.pid for daemon in self.daemons}]

    def kill_job_processes(self, job_id: str) -> list[tuple[int, str]]:
        """SIGKILL a running job's script and every process it started, as the OOM killer or a
        crashed node ends them, unbeknown to Slurm (``scancel --signal=KILL`` is a cancellation to
        it); again until none is left, since a dying worker pool may still have started one.

        Returns
        -------
        killed : `list` [`tuple` [`int`, `str`]]
            PID and command line of each process killed.
        """
        killed: list[tuple[int, str]] = []

        def kill_all() -> bool:
            # The job's processes hold its ID in their environment; its slurmstepd does not.
            processes = tagged_processes(f"SLURM_JOB_ID={job_id}")
            for pid, command in processes:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append((pid, command))
                except ProcessLookupError:
                    pass
            return not processes

        wait_until(kill_all, 10.0)
        return killed

    def stop(self) -> list[tuple[int, str]]:
        """Cancel every job, stop the daemons, remove the directory.

        Returns
        -------
        leftovers : `list` [`tuple` [`int`, `str`]]
            Processes of the cluster still alive once the jobs were cancelled and the daemons
            stopped (they are then killed, one by one).
        """
        if len(self.daemons) == 3 and all(daemon.alive() for daemon in self.daemons):
            self.client("scancel", f"--partition={self.partition}")
            wait_until(lambda: not self.jobs(), 30.0)
        for daemon in reversed(self.daemons):  # slurmd, slurmctld, munged
            daemon.stop(signal.SIGTERM)
        wait_until(lambda: not tagged_processes(self.tag), 10.0)
        left = tagged_processes(self.tag)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)
        return left

    def __enter__(self) -> SlurmCluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()


if __name__ == "__main__":
    with SlurmCluster.start() as cluster:
        print(f"export SLURM_CONF={cluster.conf}  # node {cluster.node} idle after "
              f"{cluster.startup_seconds:.1f} s; Ctrl-C stops it")
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
