"""Shared pytest set-up. Fixtures live in tests/conftest_parts/<area>.py, one module per
area (storage, data, tracking, ...); every module there is loaded as a plugin."""

import os
import pathlib

import pytest

# Keep the 2-core CI machine responsive and the runs repeatable.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

_PARTS = pathlib.Path(__file__).parent / "conftest_parts"
pytest_plugins = sorted(
    f"tests.conftest_parts.{p.stem}" for p in _PARTS.glob("*.py") if p.stem != "__init__"
)

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
    """../shared/data when this clone sits beside it; skip otherwise."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present (an outside clone has no ../shared)")
    return SHARED_DATA
