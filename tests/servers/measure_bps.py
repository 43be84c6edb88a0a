# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Measure the overheads of ``bps submit`` through the shipped Slurm site against the local parsl
site and ``pipetask run -j 1``, on the same simulated repository (the numbers of
``doc/lsst.cp.flatnorm/bps.rst``, "Slurm").

    .venv/bin/python tests/servers/measure_bps.py [--rounds 2] [--detectors 1] [--exposures 6]

``--detectors N`` makes an N x N grid of science detectors plus one wavefront detector. Each round
submits to the throwaway Slurm cluster, then locally, then runs pipetask, each into its own output
collection, and prints each run's timeline (`servers.bps_timeline`) and the load average.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).parents[1]))

from servers.bps_timeline import read_timeline
from servers.slurm import SlurmCluster

from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, run_pipetask

ENV_BIN = Path(sys.executable).parent
PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")


def submit(root: Path, repo, site: str, output: str, env: dict) -> tuple[dict[str, float], Path]:
    """bps submit with the given shipped site file; its phases' wall times and parsl run directory."""
    work = root / output.replace("/", "_")
    work.mkdir()
    retries = f"site:\n  {'slurm' if site == 'parsl_slurm' else 'local'}:\n    retries: 0\n"
    (work / "submit.yaml").write_text(f"""\
includeConfigs:
  - resource://lsst.cp.flatnorm/bps/bps_cpFlat.yaml
  - resource://lsst.cp.flatnorm/bps/sites/{site}.yaml
pipelineYaml: {PIPELINE}
payload:
  butlerConfig: {repo.root}
  inCollection: {repo.defaults_collection}
  dataQuery: "instrument='SimFlatCam'"
  output: {output}
submitPath: {work}/submit/{{outputRun}}
numberOfRetries: 0
{retries}""")
    env = dict(env, PATH=f"{ENV_BIN}{os.pathsep}{env['PATH']}")
    start = time.time()
    with open(work / "bps.log", "w") as log:
        subprocess.run([sys.executable, "-m", "lsst.cp.flatnorm.bps_support", "bps", "submit", "submit.yaml"],
                       cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    end = time.time()
    bps_log = (work / "bps.log").read_text()
    if "'tasks_failed_count': 0" not in bps_log:
        raise RuntimeError(f"jobs failed: see {work / 'bps.log'}")
    (run_dir,) = (work / "runinfo").iterdir()
    timeline = read_timeline(run_dir)
    qgraph = re.search(r"Completed creating quantum graph: Took (\d+\.\d+) seconds", bps_log)
    phases = {
        "total": end - start,
        "quantum graph": float(qgraph.group(1)) if qgraph else float("nan"),
        "before parsl (start-up, graph, pipetaskInit)": timeline.dfk_start - start,
        "parsl (jobs)": timeline.cleaned_up - timeline.dfk_start,
        "after parsl (final job, exit)": end - timeline.cleaned_up,
    }
    return phases, run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--detectors", type=int, default=1, help="science detectors per side")
    parser.add_argument("--exposures", type=int, default=6)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cp_flatnorm_measure_"))
    camera = make_sim_camera(n_side=args.detectors, n_wavefront=1, amp_width=8, amp_height=16)
    config = FlatSimConfig(n_exposures=args.exposures, dead_amplifier=None, shadow=None, saturation=None)
    repo = build_sim_repo(root / "repo", camera=camera, config=config)
    print(f"{len(camera)} detectors x {args.exposures} exposures; work in {root}")
    with SlurmCluster.start() as cluster:
        print(f"Slurm cluster (munged, slurmctld, slurmd) idle after {cluster.startup_seconds:.2f} s")
        for round_ in range(args.rounds):
            for site in ("parsl_slurm", "parsl_local"):
                output = f"u/measure/{site}{round_}"
                phases, run_dir = submit(root, repo, site, output, cluster.env)
                print(f"\n[{site} round {round_}] bps submit: "
                      + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in phases.items())
                      + f"; load average {os.getloadavg()[0]:.1f}\n{read_timeline(run_dir).summary()}")
            start = time.monotonic()
            run_pipetask(repo.root, PIPELINE, [repo.defaults_collection], f"u/measure/pipetask{round_}")
            print(f"\n[pipetask run -j 1 round {round_}] {time.monotonic() - start:.1f} s, load average "
                  f"{os.getloadavg()[0]:.1f}")
        left = cluster.stop()
    print(f"\nleft behind: {left}")


if __name__ == "__main__":
    main()
