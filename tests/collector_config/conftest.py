"""Fixtures for the collector-config tests: rendered profiles, with the rule files the hop config references."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor import render


@pytest.fixture(autouse=True)
def companion_files(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The real policy/redaction/derivation files where they exist; small stand-ins for the missing ones, so the
    template structure is still tested (tests that need the real files check for them and skip)."""
    files = dict(render.COMPANION_FILES)
    missing = [flat for flat, path in files.items() if not path.exists()]
    if missing:
        stub_dir = tmp_path_factory.mktemp("companions")
        for flat in missing:
            files[flat] = stub_dir / flat
            files[flat].write_text(f"# stand-in for {flat}\nstub: true\n")
        monkeypatch.setattr(render, "COMPANION_FILES", files)
    return files
