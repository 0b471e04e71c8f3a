"""Shared fixtures: the local Multi30k directory (never downloaded in tests) and a scratch cache."""
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multi30k"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """$MINDRUN_DATA_DIR or ../shared/data/multi30k; a missing directory fails the test (not skips)."""
    path = Path(os.environ.get("MINDRUN_DATA_DIR") or DEFAULT_DATA).resolve()
    assert path.is_dir(), f"Multi30k not found at {path}: set MINDRUN_DATA_DIR"
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets one session-wide scratch cache, never the user's ~/.cache."""
    monkeypatch.setenv("MINDRUN_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
