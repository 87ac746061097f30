"""Applying a planned import to the tenant store, one transaction per folder or file.

Applying is keyed by object id and URL: a file with the same id or the same URL is deleted with
all its versions and created again, and a folder with the same id is updated. Running a plan a
second time therefore gives the same result.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from spmt_tui.sandbox.import_plan import ERROR_INVALID_ARGUMENT, FileStep, FolderStep
from spmt_tui.sandbox.import_roles import ScopeStep, apply_scope
from spmt_tui.sandbox.roles import clear_unique_scope

if TYPE_CHECKING:
    from spmt_tui.sandbox.importer import ImportRun

log = logging.getLogger("spmt.sandbox.importer")

# NOTE: only the "0-1K" bucket name appears in Microsoft's samples; the others are guesses that
# follow the same pattern.
SIZE_BUCKETS = (
    (1024, "0-1K"),
    (10 * 1024, "1K-10K"),
    (100 * 1024, "10K-100K"),
    (1024**2, "100K-1M"),
    (10 * 1024**2, "1M-10M"),
    (100 * 1024**2, "10M-100M"),
    (1024**3, "100M-1G"),
    (None, "1G+"),
)


def _size_bucket(size: int) -> str:
    for limit, name in SIZE_BUCKETS:
        if limit is None or size < limit:
            return name
    return SIZE_BUCKETS[-1][1]


class Applier:
    """Write the planned folders and files to the tenant store, one transaction per object."""

    def __init__(self, run: ImportRun) -> None:
        self.run = run
        self.store = run.store

    def apply(self, steps: list[FolderStep | FileStep | ScopeStep]) -> None:
        for step in steps:
            self.run.checkpoint()
            started = time.monotonic()
            try:
                if isinstance(step, FolderStep):
                    self._apply_folder(step)
                elif isinstance(step, ScopeStep):
                    apply_scope(self.run, step)
                else:
                    self._apply_file(step)
            except Exception as failure:  # noqa: BLE001 - one failed object must not end the job
                log.exception("job %s: applying %s failed", self.run.job.id, step.url)
                kind = "Folder" if isinstance(step, FolderStep) else "File"
                if isinstance(step, ScopeStep):
                    kind = step.object_type
                self.run.object_error(kind, step.url, step.id, ERROR_INVALID_ARGUMENT,
                                      f"The object could not be saved: {failure}")
                if isinstance(step, FileStep):
                    for version in step.versions:
                        self.store.remove_content(version.content)
            finally:
                self.run.counters.sql_ms += (time.monotonic() - started) * 1000
            self.run.count_objects(step.objects)

    def _apply_folder(self, step: FolderStep) -> None:
        with self.store.transaction() as db:
            values = (
                step.list_id, step.url, step.name, step.parent_id, step.item_id, step.int_id,
                step.created, step.modified, step.author_id, step.editor_id,
            )
            if db.execute("SELECT 1 FROM folders WHERE id = ?", (step.id,)).fetchone():
                db.execute(
                    "UPDATE folders SET list_id = ?, url = ?, name = ?, parent_id = ?, item_id = ?, "
                    "int_id = ?, created = ?, modified = ?, author_id = ?, editor_id = ? WHERE id = ?",
                    (*values, step.id),
                )
            else:
                db.execute(
                    "INSERT INTO folders (list_id, url, name, parent_id, item_id, int_id, created, "
                    "modified, author_id, editor_id, id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, step.id),
                )
            self._set_int_id(db, step.list_id, step.int_id, step.id)
        self.run.counters.sql_queries += 4
        self.run.counters.count_type("SPFolder")
        if step.objects > 1:
            self.run.counters.count_type("SPListItem")

    def _apply_file(self, step: FileStep) -> None:
        old_content: list[str] = []
        current = step.current
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id, content FROM files WHERE id = ? OR lower(url) = lower(?)", (step.id, step.url)
            ).fetchall()
            for row in rows:
                old_content.append(row["content"])
                old_content.extend(
                    version["content"]
                    for version in db.execute("SELECT content FROM file_versions WHERE file_id = ?", (row["id"],))
                )
                db.execute("DELETE FROM file_versions WHERE file_id = ?", (row["id"],))
                db.execute("DELETE FROM files WHERE id = ?", (row["id"],))
                db.execute("DELETE FROM item_ids WHERE object_id = ?", (row["id"],))
                # A replaced file starts inheriting again, unless the package gives it a scope.
                clear_unique_scope(db, row["id"])

            db.execute(
                "INSERT INTO files (id, list_id, folder_id, url, name, length, item_id, int_id, version, "
                "created, modified, author_id, editor_id, content, job_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    step.id, step.list_id, step.folder_id, step.url, step.name, current.length, step.item_id,
                    step.int_id, current.label, step.versions[0].created, current.modified,
                    step.versions[0].author_id, current.editor_id, current.content, self.run.job.id,
                ),
            )
            # Earlier versions go to file_versions; the current one lives in the files row only,
            # like SharePoint's Versions collection, which lists only earlier versions.
            for version in step.versions[:-1]:
                db.execute(
                    "INSERT INTO file_versions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        step.id, version.label, version.length, version.created, version.modified,
                        version.author_id, version.editor_id, version.content,
                    ),
                )
            self._set_int_id(db, step.list_id, step.int_id, step.id)

        for content in old_content:
            self.store.remove_content(content)
        for version in step.versions:
            if version.content in self.run.new_content:
                self.run.new_content.remove(version.content)

        counters = self.run.counters
        counters.sql_queries += 4 + len(step.versions)
        counters.files_created += len(step.versions)
        counters.files_created_all_versions += 1
        counters.bytes_processed += sum(version.length for version in step.versions)
        counters.bytes_current_version += current.length
        bucket = counters.by_size.setdefault(
            _size_bucket(current.length),
            {"Count": 0, "TotalSize": 0, "TotalDownloadTime": 0, "TotalCreationTime": 0},
        )
        bucket["Count"] += 1
        bucket["TotalSize"] += current.length
        counters.count_type("SPFile", versions=len(step.versions))
        if step.objects > 1:
            counters.count_type("SPListItem", versions=len(step.versions))

    @staticmethod
    def _set_int_id(db: Any, list_id: str, int_id: int | None, object_id: str) -> None:
        db.execute("DELETE FROM item_ids WHERE object_id = ?", (object_id,))
        if int_id is not None:
            db.execute("INSERT OR REPLACE INTO item_ids VALUES (?, ?, ?)", (list_id, int_id, object_id))
