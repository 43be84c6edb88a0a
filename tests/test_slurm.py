# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""The flat pipeline submitted with ``bps submit`` to a real Slurm cluster through ctrl_bps_parsl.

A single-node Slurm cluster (munge, slurmctld, slurmd on loopback; ``servers.slurm``, which installs
Debian's packages first when they are absent and the tests run as root) takes the submission made
with the shipped ``bps/sites/parsl_slurm.yaml``, unchanged: parsl submits its pilot job with
sbatch and runs the BPS jobs in it. The outputs must match the simulation's truth and equal,
exactly, those of the same chain run locally by ``pipetask run``; afterwards the queue must be
empty and no process of the submission or of its jobs may be left (job steps, parsl's worker pool
and workers, pipetask). The phases' times (``servers.bps_timeline``) are printed with ``-s``.
"""

import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from butler_outputs import compare_outputs, output_dataset_types, run_checks
from lsst.cp.flatnorm.sim.camera import make_sim_camera
from lsst.cp.flatnorm.sim.flat_simulator import FlatSimConfig
from lsst.cp.flatnorm.sim.repo import build_sim_repo
from lsst.cp.flatnorm.sim.run import pipeline_uri, read_normalization
from pipetask_in_process import run_pipetask
from servers import slurm
from servers.bps_timeline import read_timeline
from servers.processes import wait_until

pytestmark = pytest.mark.slow

ENV_BIN = Path(sys.executable).parent
HAVE_BPS_PARSL = (ENV_BIN / "bps").exists()
PIPELINE = pipeline_uri("SimFlatCam", "cpFlat.yaml")
# Two detectors x six exposures of 8 x 16-pixel amplifiers: two measurement jobs (clustered by
# detector), one normalization, two combines. No shadow: with two detectors the solver cannot tell
# which entry of an exposure is the outlier.
CAMERA = make_sim_camera(n_side=1, n_wavefront=1, amp_width=8, amp_height=16)
CONFIG = FlatSimConfig(n_exposures=6, dead_amplifier=None, shadow=None, saturation=(4, 1))
OUTPUT = "u/test/cpFlatSlurm"
LOCAL = "u/test/cpFlatLocal"
SUBMIT_TIMEOUT = 420  # seconds; about a minute on 2 busy cores


@pytest.fixture(scope="module")
def cluster():
    if not HAVE_BPS_PARSL:
        pytest.skip("lsst-ctrl-bps and lsst-ctrl-bps-parsl are not installed")
    reason = slurm.skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = slurm.SlurmCluster.start()
    yield cluster
    left = cluster.stop()
    assert left == [], f"processes outlived the cluster's daemons (killed): {left}"


def session_processes(session_id):
    """Live processes of a session (the submission runs in one of its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat:
            state, _, _, session = stat[stat.rfind(")") + 2:].split()[:4]
            if int(session) == session_id and state not in ("Z", "X"):
                pids.append(int(entry.name))
    return pids


@pytest.fixture(scope="module")
def submission(cluster, tmp_path_factory):
    """Submit with the shipped Slurm site; then record the queue and leftovers, and run the same
    chain locally with pipetask's command, in this process, for comparison."""
    try:  # as on a real cluster, the nodes reach parsl's interchange by the submitter's host name
        socket.gethostbyname(platform.node())
    except OSError as error:
        pytest.fail(f"ctrl_bps_parsl's Slurm site needs this machine's host name {platform.node()!r} "
                    f"to resolve (/etc/hosts): {error}")
    root = tmp_path_factory.mktemp("slurm")
    repo = build_sim_repo(root / "repo", camera=CAMERA, config=CONFIG)
    submit_yaml = root / "submit.yaml"
    submit_yaml.write_text(f"""\
includeConfigs:
  - resource://lsst.cp.flatnorm/bps/bps_cpFlat.yaml
  - resource://lsst.cp.flatnorm/bps/sites/parsl_slurm.yaml
pipelineYaml: {PIPELINE}
payload:
  butlerConfig: {repo.root}
  inCollection: {repo.defaults_collection}
  dataQuery: "instrument='SimFlatCam' AND physical_filter='{CONFIG.physical_filter}'"
  output: {OUTPUT}
submitPath: {root}/submit/{{outputRun}}
numberOfRetries: 0
site:
  slurm:
    retries: 0
""")
    # The pilot job inherits this environment (sbatch --export=ALL): the venv's bin first on PATH.
    env = dict(cluster.env, PATH=f"{ENV_BIN}{os.pathsep}{os.environ['PATH']}")
    command = [sys.executable, "-m", "lsst.cp.flatnorm.bps_support", "bps", "submit", str(submit_yaml)]
    start = time.monotonic()
    with open(root / "bps.log", "w") as log:
        process = subprocess.Popen(command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            process.wait(timeout=SUBMIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    elapsed = time.monotonic() - start
    result = {
        "repo": repo, "root": root, "returncode": process.returncode, "elapsed": elapsed,
        "log": (root / "bps.log").read_text(),
        # parsl cancels its pilot job at shutdown; give Slurm and the processes a moment to go.
        "queue": settled(cluster.jobs),
        "leftovers": settled(cluster.leftovers),
        "session": settled(lambda: session_processes(process.pid)),
        "pilot_jobs": [cluster.job_times(job_id) for job_id in _all_job_ids(cluster)],
    }
    for pid in result["session"]:  # do not leave them running for the rest of the suite
        os.kill(pid, 9)
    start = time.monotonic()
    run_pipetask(repo.root, PIPELINE, [repo.defaults_collection], LOCAL, log_path=root / "pipetask.log")
    result["local_elapsed"] = time.monotonic() - start
    return result


def settled(listing, patience=15.0):
    """What ``listing()`` still lists once it is empty or ``patience`` seconds have passed."""
    wait_until(lambda: not listing(), patience)
    return listing()


def _all_job_ids(cluster):
    result = cluster.client("scontrol", "-o", "show", "job")
    return [item.split("=", 1)[1] for item in result.stdout.split() if item.startswith("JobId=")]


def test_bps_submit_to_slurm(submission):
    """One test item, so that pytest-xdist runs the submission once (it tears module fixtures
    down between the items of a group when its queue runs short)."""
    run_checks(submission, checks=[
        check_submission_succeeded,
        check_jobs_ran_in_a_slurm_pilot_job,
        check_nothing_is_left_behind,
        check_outputs_equal_the_local_run_exactly,
        check_outputs_match_truth,
    ])


def check_submission_succeeded(submission):
    log = submission["log"]
    assert submission["returncode"] == 0, log[-3000:]
    assert "'tasks_failed_count': 0" in log, log[-3000:]
    failed = [path for path in (submission["root"] / "submit").rglob("*.stderr")
              if "Traceback" in path.read_text()]
    assert failed == [], failed and failed[0].read_text()[-3000:]


def check_jobs_ran_in_a_slurm_pilot_job(submission):
    """One pilot job, submitted by parsl with the site's settings, ran every BPS job and was
    cancelled by parsl at the end; the timeline is printed with -s."""
    (pilot,) = submission["pilot_jobs"]
    assert pilot["JobState"] == "CANCELLED"  # parsl's scale-in
    assert pilot["Partition"] == slurm.SlurmCluster.partition
    assert pilot["TimeLimit"] == "02:00:00"
    assert pilot["OverSubscribe"] == "NO"  # --exclusive
    (run_dir,) = (submission["root"] / "runinfo").iterdir()
    timeline = read_timeline(run_dir)
    assert timeline.executor == "slurm"
    assert sorted(job.app for job in timeline.jobs) == [
        "cpFlatCombine", "cpFlatCombine", "cpFlatNormalize", "measureByDetector", "measureByDetector"]
    assert sum(job.n_quanta for job in timeline.jobs) == len(CAMERA) * CONFIG.n_exposures + 1 + len(CAMERA)
    print(f"\nbps submit {submission['elapsed']:.1f} s (pipetask run -j 1 of the same chain: "
          f"{submission['local_elapsed']:.1f} s); Slurm pilot job submitted {pilot['SubmitTime']}, "
          f"started {pilot['StartTime']}, ended {pilot['EndTime']}\n{timeline.summary()}")


def check_nothing_is_left_behind(submission):
    assert submission["queue"] == []
    assert submission["leftovers"] == []
    assert submission["session"] == []


def check_outputs_equal_the_local_run_exactly(submission):
    repo = submission["repo"]
    counts = compare_outputs(repo.butler, OUTPUT, repo.butler, LOCAL, output_dataset_types(PIPELINE))
    assert sorted(counts.values()) == [1, 1, len(CAMERA), len(CAMERA) * CONFIG.n_exposures]


def check_outputs_match_truth(submission):
    repo = submission["repo"]
    truth = repo.truth
    outputs = read_normalization(repo.butler, OUTPUT, "SimFlatCam", CONFIG.physical_filter)
    assert set(outputs.table["flag"]) == {"USED"}
    for detector, scale in truth.detector_scales().items():
        assert outputs.scales["detScale"][detector] == pytest.approx(scale, rel=1e-3)
    recovered = outputs.exposure_scales()
    for exposure, scale in truth.exposure_scales().items():
        assert recovered[exposure] == pytest.approx(scale, rel=1e-3)
    for detector in CAMERA:
        detector_id = detector.getId()
        flat = repo.butler.get("flat", instrument="SimFlatCam", detector=detector_id,
                               physical_filter=CONFIG.physical_filter, collections=OUTPUT)
        usable = truth.usable_pixels(detector_id)
        ratio = flat.image.array[usable] / truth.pixel_response(detector_id)[usable]
        assert np.mean(ratio) == pytest.approx(1.0, rel=2e-3)
        # Six exposures of ~10^4 electrons: ~0.4% noise per pixel.
        assert np.percentile(np.abs(ratio - 1), 99) < 0.02
