"""``spmt-tui sandbox export``: write a sandbox library out as a folder tree.

Each file gets the stored bytes and its stored Modified time, so what arrived can be compared
with what left (``diff -r``, ``rsync -n --itemize-changes`` or a hash walk).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from spmt_tui.sandbox.store import TenantStore, parse_time


class ExportError(RuntimeError):
    pass


@dataclass
class ExportResult:
    folders: int
    files: int
    bytes: int


def export_library(data_dir: Path, library_title: str, out: Path, site_url: str = "/sites/demo") -> ExportResult:
    if not (data_dir / "tenant.db").exists():
        raise ExportError(f"no sandbox data in {data_dir}: pass the --data folder the sandbox ran with")
    store = TenantStore(data_dir)
    try:
        site = store.site_by_url(site_url)
        if site is None:
            known = ", ".join(s.url for s in store.sites())
            raise ExportError(f"site {site_url} not found in the sandbox; it has {known}")
        library = store.library_by_title(site.id, library_title)
        if library is None:
            known = ", ".join(lib.title for lib in store.libraries(site.id))
            raise ExportError(f"library {library_title!r} not found in {site_url}; it has {known}")
        prefix = library.root_folder_url.rstrip("/") + "/"
        out.mkdir(parents=True, exist_ok=True)
        root = out.resolve()

        def inside(relative: str) -> Path:
            """Return the export path of a library path; never a path outside ``out``."""
            target = (root / relative).resolve()
            if os.path.commonpath([root, target]) != str(root):
                raise ExportError(f"library path {relative!r} would be written outside {out}; "
                                  "the export stopped")
            return target

        folders = [row for row in store.folders_in_library(library.id) if row["parent_id"]]
        for row in folders:
            inside(row["url"][len(prefix):]).mkdir(parents=True, exist_ok=True)
        files = total = 0
        for row in store.files_in_library(library.id):
            target = inside(row["url"][len(prefix):])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(store.content_path(row["content"]), target)
            stamp = parse_time(row["modified"]).timestamp()
            os.utime(target, (stamp, stamp))
            files += 1
            total += row["length"]
        # Folder times last, deepest first, because writing a child changes the parent's time.
        for row in sorted(folders, key=lambda r: r["url"].count("/"), reverse=True):
            stamp = parse_time(row["modified"]).timestamp()
            os.utime(inside(row["url"][len(prefix):]), (stamp, stamp))
        return ExportResult(len(folders), files, total)
    finally:
        store.close()
