"""Drive ``spmt-tui`` in a real pseudo-terminal (tmux) through the wizard, as a user would.

The app runs as ``python -m spmt_tui`` inside a tmux server of its own (``tmux -L``), keys go
in with ``send-keys`` and the screen comes back with ``capture-pane -p``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from test_tui_sandbox import make_share

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed; install tmux to run the terminal test")


class Tmux:
    """One tmux server (private socket) with one session running a command."""

    def __init__(self, command: str, width: int = 100, height: int = 30) -> None:
        self.socket = f"spmt-tui-test-{uuid.uuid4().hex[:8]}"
        self.name = "app"
        self._run("new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), command)

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=30)

    def send(self, *keys: str) -> None:
        self._run("send-keys", "-t", self.name, *keys)

    def screen(self) -> str:
        return self._run("capture-pane", "-p", "-t", self.name).stdout

    def alive(self) -> bool:
        return self._run("has-session", "-t", self.name).returncode == 0

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            match = re.search(pattern, text)
            if match:
                return match
            time.sleep(0.2)
        raise AssertionError(f"{pattern!r} did not appear within {timeout:.0f} s; screen:\n{text}")

    def kill(self) -> None:
        self._run("kill-server")


@pytest.fixture
def terminal_env(tmp_path: Path) -> dict[str, str]:
    env = {
        "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
        "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
        "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
        "SPMT_TUI_CACHE_PASSPHRASE": "tmux-test-passphrase",
        "TERM": "xterm-256color",
    }
    for name in ("SPMT_TUI_AZURITE_BIN", "PATH", "LANG", "LC_ALL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def app_command(env: dict[str, str], *arguments: str) -> str:
    assignments = " ".join(f"{name}={shlex.quote(value)}" for name, value in env.items())
    args = " ".join(shlex.quote(argument) for argument in arguments)
    # COLUMNS and LINES would override the pane size that the app reads from the terminal.
    return (f"cd {shlex.quote(str(REPO))} && env -u COLUMNS -u LINES {assignments} "
            f"{shlex.quote(sys.executable)} -m spmt_tui {args}")


def test_wizard_in_tmux(sandbox: Any, tmp_path: Path, terminal_env: dict[str, str]) -> None:
    share = make_share(tmp_path, files=12)
    command = app_command(terminal_env, "--tenant-profile", str(sandbox.profile_path),
                          "--working-folder", str(tmp_path / "work"), "--source", str(share))
    tmux = Tmux(command)
    try:
        tmux.wait_for(r"New migration", timeout=30)
        tmux.send("n")
        tmux.wait_for(r"Sign-in method")
        assert sandbox.site_url in tmux.screen()

        tmux.send("C-n")
        code = tmux.wait_for(r"([A-Z0-9]{9})\s+c copy code", timeout=30).group(1)
        assert "devicelogin" in tmux.screen()
        user = sandbox.profile["user"]
        response = requests.post(f"{sandbox.profile['resource']}/devicelogin",
                                 data={"user_code": code, "username": user["username"],
                                       "password": user["password"]},
                                 verify=sandbox.ca_bundle, timeout=30)
        assert response.status_code == 200

        # The field scrolls to its end, so only the end of the prefilled path is visible.
        tmux.wait_for(r"Folder to migrate\s+\S*" + re.escape(f"{share.parent.name}/{share.name}"),
                      timeout=60)
        tmux.wait_for(r"readable folder")
        tmux.send("Enter")
        tmux.wait_for(r"document librar", timeout=30)
        tmux.send("C-n")
        tmux.wait_for(r"SPMT defaults")
        tmux.send("C-n")
        tmux.wait_for(r"Signed in as\s+" + re.escape(user["username"]))
        tmux.send("C-n")
        tmux.wait_for(r"Migration completed", timeout=180)
        screen = tmux.screen()
        assert "failed\u00a00" in screen or "failed 0" in screen
        assert "SummaryReport.csv" in screen

        tmux.send("Escape")
        tmux.wait_for(r"1 Files")
        assert "completed" in tmux.screen()
        tmux.send("C-q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tmux.alive(), "the app did not exit on Ctrl+Q"
    finally:
        tmux.kill()


def test_fits_80x24_with_16_colours(tmp_path: Path, terminal_env: dict[str, str]) -> None:
    env = dict(terminal_env, TEXTUAL_COLOR_SYSTEM="standard", NO_COLOR="1")
    command = app_command(env, "--working-folder", str(tmp_path / "work"))
    tmux = Tmux(command, width=80, height=24)
    try:
        tmux.wait_for(r"New migration", timeout=30)
        tmux.wait_for(r"q Quit")  # the footer is drawn a moment after the body
        lines = tmux.screen().splitlines()
        assert len(lines) == 24
        assert "Quit" in lines[23]
        assert "Migrate file shares" in lines[1]
        tmux.send("n")
        tmux.wait_for(r"Sign-in method")
        assert "Sign in" in tmux.screen()
        tmux.send("Escape")
        tmux.wait_for(r"New migration")
        tmux.send("q")
        deadline = time.monotonic() + 20
        while tmux.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not tmux.alive()
    finally:
        tmux.kill()
