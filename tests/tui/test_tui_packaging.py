"""The wheel ships the theme files, and an installed copy of the package loads them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from spmt_tui.tui.themes import THEMES_DIR

REPO = Path(__file__).resolve().parents[2]


def test_wheel_contains_themes(tmp_path: Path) -> None:
    # Build from a copy, so the build/ and egg-info folders setuptools writes stay out of the
    # checkout. --no-build-isolation and --no-index keep pip offline.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "spmt_tui", source / "spmt_tui",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--wheel-dir", str(out), str(source)],
        capture_output=True, text=True, timeout=240)
    assert build.returncode == 0, build.stderr[-3000:]
    wheels = list(out.glob("spmt_tui-*.whl"))
    assert len(wheels) == 1, wheels

    theme_files = sorted(path.name for path in THEMES_DIR.glob("*.toml"))
    assert len(theme_files) >= 3
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = set(wheel.namelist())
        wheel.extractall(tmp_path / "installed")
    for name in theme_files:
        assert f"spmt_tui/tui/theme_files/{name}" in names
    assert "spmt_tui/tui/app.tcss" in names

    # The unpacked wheel is what a non-editable install puts in site-packages.
    environment = {**os.environ, "PYTHONPATH": str(tmp_path / "installed")}
    probe = ("import spmt_tui.tui.themes as themes; print(themes.__file__); "
             "print(' '.join(sorted(themes.load_themes())))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=tmp_path, env=environment, timeout=120)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    module_file, names_line = loaded.stdout.strip().splitlines()
    assert Path(module_file).is_relative_to(tmp_path / "installed")
    assert "not found" not in loaded.stderr
    for name in theme_files:
        assert name.removesuffix(".toml") in names_line.split()


def test_repository_themes_link() -> None:
    # themes/ at the repository root is where people look for the theme files.
    link = REPO / "themes"
    assert link.is_symlink()
    assert link.resolve() == THEMES_DIR
