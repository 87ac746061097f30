"""Shared fixtures: a real sandbox tenant (HTTPS server plus Azurite) on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from harness import Sandbox, start_sandbox


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """One sandbox tenant for the whole test session."""
    box = start_sandbox(tmp_path_factory.mktemp("tenant"))
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def fresh_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox of its own, for tests that change faults or need an empty tenant."""
    box = start_sandbox(tmp_path / "tenant")
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep config, data and keyring files of the code under test inside the test's folder."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", os.environ.get("PYTHON_KEYRING_BACKEND",
                                                                 "keyring.backends.fail.Keyring"))
