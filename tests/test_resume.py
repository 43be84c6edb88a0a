# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Resuming an interrupted ``pipetask run`` of the flat chain, as the reliability page says.

Runs killed by SIGTERM (a test hook, `flat_repo.KILL_HOOK`) just before the normalization's first
write and between its two writes (the scales and the scale table, written in no fixed order) are
resumed with the documented options, and their outputs compared, exactly, with an uninterrupted
run's (`fault_chain.reference_root`, shared with the fault modules).
``--extend-run`` on a completed collection, and on a run whose quantum wrote part of its outputs,
fail as the middleware makes them fail.
"""

import pytest

from lsst.daf.butler import Butler
from butler_outputs import compare_outputs, output_dataset_types
from fault_chain import CONFIG, EVERY_OUTPUT, NORMALIZATION_OUTPUTS, PIPELINE, REFERENCE, copy_of_reference
from flat_repo import PIPETASK, log_lines, run_pipetask
from worker_cache import built_once

pytestmark = pytest.mark.slow

N_MEASURED = EVERY_OUTPUT["cpFlatStatistics"]
EMPTY = "Error: QuantumGraph was empty; ERROR logs above should provide details."
MEASURE_SKIPPED = ("lsst.pipe.base.quantum_graph_builder INFO: Dropping task cpFlatMeasure because no "
                   f"quanta remain ({N_MEASURED} previously succeeded and skipped).")


class Runs:
    """The repository and what each pipetask run printed."""

    def __init__(self, root, tmp_path_factory):
        # The inputs and the uninterrupted run, REFERENCE, shared with the fault modules.
        self.repo = copy_of_reference(tmp_path_factory, root)
        self.data_id = {"instrument": "SimFlatCam", "physical_filter": CONFIG.physical_filter}

        def run(output, *options, **kwargs):
            # Only the killed runs need a process of their own.
            return run_pipetask(self.repo.root, [self.repo.defaults_collection], output, PIPELINE,
                                *options, in_process="kill_before_put" not in kwargs, **kwargs)

        self.processes = {
            "completed": run(REFERENCE, "--extend-run"),
            # Killed before the normalization's first write: nothing of it is written.
            "killed_before": run("u/before", kill_before_put=NORMALIZATION_OUTPUTS),
            # Killed between its two writes: one of the two is written.
            "killed_between": run("u/between", kill_before_put=NORMALIZATION_OUTPUTS, kill_after_puts=1),
        }
        self.butler = Butler.from_config(str(root))
        self.between = self.outputs("u/between")
        self.processes.update({
            "before_extend": run("u/before", "--extend-run"),
            "between_extend": run("u/between", "--extend-run"),
            "between_skip": run("u/between", "--extend-run", "--skip-existing-in", "u/between"),
            "between_clobber": run("u/between", "--extend-run", "--clobber-outputs"),
        })
        self.butler = Butler.from_config(str(root))

    def outputs(self, chain):
        """Dataset type -> number of datasets in the output run of ``chain``."""
        run = self.butler.collections.get_info(chain).children[0]
        counts = {}
        for dataset_type in ("cpFlatStatistics", "cpFlatNormalizeScaleTable", "cpFlatNormalizeScales",
                             "cpFlatNormalize_metadata", "flat"):
            counts[dataset_type] = len(self.butler.query_datasets(dataset_type, collections=run,
                                                                  explain=False))
        return counts


@pytest.fixture(scope="module")
@built_once
def runs(tmp_path_factory):
    if not PIPETASK.exists():
        pytest.skip("pipetask is not installed beside this interpreter")
    return Runs(tmp_path_factory.mktemp("resume") / "repo", tmp_path_factory)


def test_the_kills_happened_where_intended(runs):
    for name in ("killed_before", "killed_between"):
        assert runs.processes[name].returncode == -15, (name, runs.processes[name].stderr[-3000:])
    between = dict(runs.between)
    assert sorted(between.pop(name) for name in NORMALIZATION_OUTPUTS) == [0, 1]
    assert between == {"cpFlatStatistics": N_MEASURED, "cpFlatNormalize_metadata": 0, "flat": 0}


def test_extend_run_on_a_completed_collection_fails_with_an_empty_graph(runs):
    process = runs.processes["completed"]
    assert process.returncode == 1
    lines = log_lines(process)
    assert MEASURE_SKIPPED in lines
    assert ("lsst.pipe.base.quantum_graph_builder INFO: Dropping task cpFlatNormalize because no quanta "
            "remain (1 previously succeeded and skipped).") in lines
    assert "lsst.ctrl.mpexec.cli.utils INFO: QuantumGraph contains no quanta." in lines
    assert EMPTY in lines


def test_killed_before_the_normalization_wrote_resumes_with_extend_run(runs):
    process = runs.processes["before_extend"]
    assert process.returncode == 0, process.stderr[-3000:]
    assert MEASURE_SKIPPED in log_lines(process)
    counts = compare_outputs(runs.butler, REFERENCE, runs.butler, "u/before", output_dataset_types(PIPELINE))
    assert counts == EVERY_OUTPUT


def test_killed_between_the_normalization_writes_needs_clobber_outputs(runs):
    """--extend-run, with or without --skip-existing-in, refuses the output the killed quantum left;
    --extend-run --clobber-outputs runs that quantum again (and the combine) and skips the measure."""
    written = next(name for name in NORMALIZATION_OUTPUTS if runs.between[name])
    for name in ("between_extend", "between_skip"):
        process = runs.processes[name]
        assert process.returncode == 1, name
        assert any(line.startswith("lsst.pipe.base.quantum_graph_builder.OutputExistsError: Potential "
                                   f"output dataset {written}@{{instrument: 'SimFlatCam'")
                   and line.endswith("but clobbering outputs was not expected to be necessary.")
                   for line in log_lines(process)), name
    process = runs.processes["between_clobber"]
    assert process.returncode == 0, process.stderr[-3000:]
    lines = log_lines(process)
    assert MEASURE_SKIPPED in lines
    assert ("lsst.pipe.base.mp_graph_executor INFO: Executed 3 quanta successfully, 0 failed and 0 remain "
            "out of total 3 quanta.") in lines
    counts = compare_outputs(runs.butler, REFERENCE, runs.butler, "u/between", output_dataset_types(PIPELINE))
    assert counts == EVERY_OUTPUT
