"""Ray fixtures: one embedded local Ray per test module that needs it (start-up costs ~10 s)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def local_ray():
    import ray

    from h2s_dist.train.launch import ensure_ray

    ensure_ray()
    yield
    ray.shutdown()
