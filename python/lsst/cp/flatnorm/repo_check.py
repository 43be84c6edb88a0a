# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Whether a repository's registry and its datastore's files agree, after a run that failed.

daf_butler registers a dataset only together with its file, but a process that dies in the middle
of a write (SIGKILL, a lost node, a full disk) can leave a file that no dataset owns: the datastore
writes each file under a temporary name beside its final one and moves it there, and registers the
dataset after.  `check_repository` lists, for a local file datastore,

- every registered dataset whose file is missing or does not have the size the datastore recorded;
- every file below the datastore's root (outside its top level, where ``butler.yaml`` and a SQLite
  registry live) that no registered dataset owns: what an interrupted write left.

Such files are harmless (a resumed run writes its own, under the same final name) but take space;
`remove_orphans` deletes them.  Only do that while no process writes to the repository, since a
write in progress has a file that is not registered yet.
"""

from __future__ import annotations

__all__ = ["RepositoryCheck", "check_repository", "remove_orphans"]

import dataclasses
import os
import uuid
from pathlib import Path

from lsst.daf.butler import Butler, DatasetRef
from lsst.daf.butler.datastores.fileDatastore import FileDatastore


@dataclasses.dataclass(frozen=True)
class RepositoryCheck:
    """What `check_repository` found."""

    root: Path
    """The datastore's root directory."""
    n_datasets: int
    """Registered datasets checked."""
    broken: list[str]
    """A line for each registered dataset whose file is missing or has another size than recorded."""
    orphans: list[Path]
    """Files below the root that no registered dataset owns, sorted."""

    @property
    def consistent(self) -> bool:
        """Whether every dataset has its file and every file its dataset."""
        return not self.broken and not self.orphans

    def report(self) -> str:
        """The findings, one line each, for people."""
        lines = [f"{self.n_datasets} registered datasets checked in {self.root}: "
                 f"{len(self.broken)} without their file as recorded, "
                 f"{len(self.orphans)} files that no dataset owns."]
        lines += [f"  dataset {line}" for line in self.broken]
        lines += [f"  no dataset owns {path}" for path in self.orphans]
        return "\n".join(lines)


def check_repository(butler: Butler) -> RepositoryCheck:
    """Compare every registered dataset, in every collection, with the datastore's files.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        A butler of the repository; its datastore must be a local file datastore.

    Returns
    -------
    check : `RepositoryCheck`

    Raises
    ------
    TypeError
        Raised if the datastore is not a file datastore on a local file system.
    """
    datastore = _file_datastore(butler)
    root = Path(datastore.root.ospath)
    owned: set[Path] = set()
    broken: list[str] = []
    refs = _all_datasets(butler)
    for ref in refs:
        records = datastore.getStoredItemsInfo(ref, ignore_datastore_records=True)
        if not records:
            broken.append(f"{_describe(ref)}: registered, but the datastore has no file for it")
        for record in records:
            path = Path(record.file_location(datastore.locationFactory).uri.ospath)
            owned.add(path)
            if problem := _file_problem(path, record.file_size):
                broken.append(f"{_describe(ref)}: {path} {problem}")
    orphans = sorted(path for path in _stored_files(root) if path not in owned)
    return RepositoryCheck(root, len(refs), broken, orphans)


def remove_orphans(check: RepositoryCheck) -> None:
    """Delete the files that `check_repository` found no dataset owns (a file already gone is
    skipped); empty directories stay."""
    for path in check.orphans:
        path.unlink(missing_ok=True)


def _file_datastore(butler: Butler) -> FileDatastore:
    # The files' recorded sizes and locations are only in the datastore's records, which the
    # butler's public API does not expose.
    datastore = getattr(butler, "_datastore", None)
    if not isinstance(datastore, FileDatastore) or not datastore.root.isLocal:
        raise TypeError(f"The repository's datastore is {type(datastore).__name__}, not a file datastore "
                        "on a local file system; only that can be checked.")
    return datastore


def _all_datasets(butler: Butler) -> list[DatasetRef]:
    """Every registered dataset once (one may be in several collections)."""
    refs: dict[uuid.UUID, DatasetRef] = {}
    for dataset_type in butler.registry.queryDatasetTypes():
        for ref in butler.query_datasets(dataset_type, collections="*", find_first=False, explain=False,
                                         limit=None):
            refs[ref.id] = ref
    return list(refs.values())


def _describe(ref: DatasetRef) -> str:
    return f"{ref.datasetType.name}@{ref.dataId.required} in {ref.run}"


def _file_problem(path: Path, recorded_size: int) -> str | None:
    """Why the file does not match its record, or `None`; a negative size was not recorded."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "is missing"
    if recorded_size >= 0 and size != recorded_size:
        return f"has {size} bytes, {recorded_size} recorded"
    return None


def _stored_files(root: Path) -> list[Path]:
    """Files in the subdirectories of ``root`` (datasets' files are always there: their paths begin
    with their run)."""
    return [Path(directory, name) for directory, _, names in os.walk(root) if Path(directory) != root
            for name in names]
