# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Compare every output dataset of a pipeline between two collections (or two repositories): the
same data IDs, and equal contents, exactly (NaN equal to NaN), dataset type by dataset type.

Task metadata and logs are left out (they hold times and host names); everything a task writes
through its connections is compared: statistics, scales, scale tables and flats (image, mask,
variance and header)."""

from __future__ import annotations

__all__ = ["compare_outputs", "output_dataset_types", "run_checks"]

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from astropy.table import Table

from lsst.daf.butler import Butler
from lsst.pipe.base import Pipeline, TaskMetadata


def output_dataset_types(pipeline_uri: str) -> dict[str, str]:
    """The dataset types the pipeline's quanta write through their connections, by task label
    (metadata and logs excluded), read from the pipeline itself so that renames follow."""
    graph = Pipeline.from_uri(pipeline_uri).to_graph()
    return {edge.parent_dataset_type_name: label
            for label, task in graph.tasks.items() for edge in task.outputs.values()}


def _data_id_key(data_id) -> tuple:
    return tuple(sorted((name, data_id[name]) for name in data_id.required))


def _plain(value):
    """Contents as plain Python/numpy values that `numpy.testing.assert_equal` compares."""
    if isinstance(value, TaskMetadata):
        return value.to_dict()
    if isinstance(value, Table):
        return {"columns": value.colnames,
                **{name: np.asarray(value[name]) for name in value.colnames},
                "meta": dict(value.meta)}
    if hasattr(value, "image") and hasattr(value, "mask") and hasattr(value, "variance"):
        return {"image": value.image.array, "mask": value.mask.array, "variance": value.variance.array,
                "metadata": dict(value.metadata)}
    return value


def compare_outputs(
    butler_a: Butler, collection_a: str, butler_b: Butler, collection_b: str,
    dataset_types: Mapping[str, str],
) -> dict[str, int]:
    """Assert that both collections hold the same data IDs of each dataset type, with equal contents.

    Returns
    -------
    counts : `dict` [`str`, `int`]
        Number of datasets compared, by dataset type.

    Raises
    ------
    AssertionError
        Naming the dataset type and data ID that differ.
    """
    counts = {}
    for dataset_type in dataset_types:
        refs_a = {_data_id_key(ref.dataId): ref
                  for ref in butler_a.query_datasets(dataset_type, collections=collection_a, limit=None)}
        refs_b = {_data_id_key(ref.dataId): ref
                  for ref in butler_b.query_datasets(dataset_type, collections=collection_b, limit=None)}
        assert refs_a, f"no {dataset_type} in {collection_a}"
        assert set(refs_a) == set(refs_b), (
            f"{dataset_type}: data IDs differ: only in A {sorted(set(refs_a) - set(refs_b))}, "
            f"only in B {sorted(set(refs_b) - set(refs_a))}")
        for key, ref_a in refs_a.items():
            a = _plain(butler_a.get(ref_a))
            b = _plain(butler_b.get(refs_b[key]))
            np.testing.assert_equal(a, b, err_msg=f"{dataset_type} {dict(key)} differs")
        counts[dataset_type] = len(refs_a)
    return counts


def run_checks(*args, checks: Sequence[Callable]) -> None:
    """Call every check with ``args``; then fail with all the failed checks' messages, if any.

    For tests that are one item on purpose (an expensive set-up that pytest-xdist would otherwise
    tear down and rebuild between the items of a group) but check several things.
    """
    failures = []
    for check in checks:
        try:
            check(*args)
        except AssertionError as error:
            failures.append(f"{check.__name__}: {error}")
    assert not failures, "\n\n".join(failures)
