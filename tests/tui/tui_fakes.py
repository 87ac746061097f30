"""Stand-ins for the tenant and the engine, for snapshot tests that must not vary.

``FakeServices`` returns fixed data for sign-in, site and folder look-ups, and ``FakeMigration``
follows the engine's ``Migration`` contract (stats, sink, pause, resume, cancel, run) and
moves a given number of files through the stages. With ``steps=0`` it only reports what
``preset`` says and waits, so a snapshot sees exactly the same numbers every time.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spmt_tui.engine.progress import ItemEvent, LogEvent, PhaseEvent, Stats, StatsSnapshot
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import TenantProfile
from spmt_tui.tui.plan import SignedIn, TaskSpec
from spmt_tui.tui.services import Folder, Library, Services, ServiceError, SignInRequest, SiteInfo

SITE_URL = "https://127.0.0.1:8443/sites/demo"


class FakeProvider:
    kind = "user"

    async def get_token(self) -> str:
        return "fake-token"

    def whoami(self) -> str:
        return "admin@sandbox.example"


def fake_signed_in(method: str = "password") -> SignedIn:
    profile = TenantProfile(authority="https://127.0.0.1:8443/tenant", site_url=SITE_URL,
                            resource="https://127.0.0.1:8443", public_client_id="client")
    return SignedIn(FakeProvider(), profile, "admin@sandbox.example", method)  # type: ignore[arg-type]


@dataclass
class FakeSession:
    id: str
    created: str
    status: str
    tasks: list[str]
    counts: dict[str, int]
    report_dir: str = ""
    profile_path: str = ""
    db_path: str = ""
    message: str = ""


@dataclass
class FakeResult:
    status: str
    counts: dict[str, int]
    report_dir: Path
    message: str = ""
    exit_code: int = 0


class FakeMigration:
    """Moves ``files`` fake files through the stages, ``batch`` per step."""

    def __init__(self, tasks: list[TaskSpec], sink: Any, working_folder: Path, *, files: int = 40,
                 batch: int = 10, step_seconds: float = 0.05, steps: int | None = None,
                 session_id: str = "20240131-080000-abc123", fail_every: int = 13,
                 preset: StatsSnapshot | None = None) -> None:
        self.tasks = tasks
        self.sink = sink
        self.files = files
        self.batch = batch
        self.step_seconds = step_seconds
        self.steps = steps
        self.fail_every = fail_every
        self.session_id = session_id
        self.session_dir = Path(working_folder) / "sessions" / session_id
        self.report_dir = self.session_dir / "reports"
        self.log_path = self.session_dir / "logs" / "spmt-tui.log"
        self.stats = Stats()
        self.preset = preset
        if preset is not None:
            self.stats.snapshot = lambda: preset  # type: ignore[method-assign]
        self._running = threading.Event()
        self._running.set()
        self._cancelled = threading.Event()

    def pause(self) -> None:
        self._running.clear()
        self.stats.set_phase("paused")
        self.sink(PhaseEvent("paused"))

    def resume(self) -> None:
        self._running.set()
        self.stats.set_phase("migrating")
        self.sink(PhaseEvent("migrating"))

    def cancel(self) -> None:
        self._cancelled.set()
        self._running.set()

    async def _wait_if_paused(self) -> None:
        while not self._running.is_set():
            await asyncio.sleep(0.02)

    async def run(self) -> FakeResult:
        self.sink(LogEvent("info", f"session {self.session_id} started"))
        if self.steps == 0:
            while not self._cancelled.is_set():
                await asyncio.sleep(0.05)
            return self._finish("cancelled")
        self.stats.set_phase("scanning")
        self.sink(PhaseEvent("scanning"))
        for item in range(1, self.files + 1):
            self.stats.add("scanned")
            self.stats.add_bytes(total=1000 * item)
            self.sink(ItemEvent(item, 1, f"folder {item % 3}/file-{item:05d}.docx", "scanned", 1000 * item))
        self.stats.set_phase("migrating")
        self.sink(PhaseEvent("migrating"))
        for start in range(1, self.files + 1, self.batch):
            await self._wait_if_paused()
            if self._cancelled.is_set():
                return self._finish("cancelled")
            for item in range(start, min(self.files + 1, start + self.batch)):
                path = f"folder {item % 3}/file-{item:05d}.docx"
                if self.fail_every and item % self.fail_every == 0:
                    self.stats.add("failed")
                    self.sink(ItemEvent(item, 1, path, "failed", 1000 * item, "0x01510001",
                                        "upload failed: HTTP 503 after 8 attempts"))
                    continue
                for stage in ("packaged", "uploaded", "submitted", "migrated"):
                    self.stats.add(stage)
                self.stats.add_bytes(uploaded=1000 * item, migrated=1000 * item)
                self.sink(ItemEvent(item, 1, path, "migrated", 1000 * item))
            self.sink(LogEvent("info", f"package {start // self.batch + 1} migrated"))
            await asyncio.sleep(self.step_seconds)
        failed = self.stats.snapshot().counts.get("failed", 0)
        return self._finish("completed_with_failures" if failed else "completed",
                            f"{failed} item(s) failed; see ItemFailureReport" if failed else "")

    def _finish(self, status: str, message: str = "") -> FakeResult:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        (self.report_dir / "SummaryReport.csv").write_text(
            "Source,Destination,Status\n/srv/share,Documents,Completed\n", encoding="utf-8")
        (self.report_dir / "ItemReport_R1.csv").write_text("Source,Status\n", encoding="utf-8")
        self.stats.set_phase(status, message)
        self.sink(PhaseEvent(status, message))
        counts = dict(self.stats.snapshot().counts)
        return FakeResult(status, counts, self.report_dir, message)


@dataclass
class FakeServices(Services):
    """Fixed data: one site with two libraries and a small folder tree."""

    sessions: list[FakeSession] = field(default_factory=list)
    migration_options: dict[str, Any] = field(default_factory=dict)
    created: list[FakeMigration] = field(default_factory=list)
    sign_in_error: str = ""
    device_code: bool = False

    def __post_init__(self) -> None:
        super().__init__()

    def read_profile(self, path: Path) -> TenantProfile:
        return fake_signed_in().profile

    async def sign_in(self, request: SignInRequest, on_prompt: Any) -> SignedIn:
        if self.sign_in_error:
            raise ServiceError(self.sign_in_error)
        if request.method == "device-code" and self.device_code:
            from spmt_tui.auth.tokens import DeviceCodePrompt

            on_prompt(DeviceCodePrompt("ABCD-EFGH2", "https://127.0.0.1:8443/devicelogin", "", 900))
            await asyncio.sleep(3600)
        return fake_signed_in(request.method)

    async def saved_sign_in(self, profile_path: Path | None, on_prompt: Any) -> SignedIn | None:
        return fake_signed_in()

    async def site(self, signed_in: SignedIn, site_url: str) -> SiteInfo:
        return SiteInfo("Demo", site_url, (Library("Documents", "/sites/demo/Shared Documents"),
                                           Library("Archive", "/sites/demo/Archive")))

    async def folders(self, signed_in: SignedIn, site_url: str, server_relative_url: str) -> list[Folder]:
        if server_relative_url.count("/") > 4:
            return []
        return [Folder(name, f"{server_relative_url}/{name}") for name in ("Finance", "Projects")]

    def list_sessions(self, working_folder: Path) -> list[Any]:
        return list(self.sessions)

    def new_migration(self, tasks: list[TaskSpec], settings: Settings, signed_in: SignedIn,
                      sink: Any) -> FakeMigration:
        migration = FakeMigration(tasks, sink, Path(settings.working_folder), **self.migration_options)
        self.created.append(migration)
        return migration

    def open_session(self, session_id: str, settings: Settings, signed_in: SignedIn,
                     sink: Any) -> FakeMigration:
        migration = FakeMigration([], sink, Path(settings.working_folder), session_id=session_id,
                                  **self.migration_options)
        self.created.append(migration)
        return migration
