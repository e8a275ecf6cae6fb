"""Closing the `ray_data` feed (RayDataStream.close) waits for Ray Data's batch workers, which
Ray Data does not join: one still fetching blocks when Ray shuts down exits the whole process
(status 1, no message). No Ray here: stand-in threads carry the workers' name.
"""

from __future__ import annotations

import threading
import time


def _named_thread(target) -> threading.Thread:
    from h2s_dist.data.ray_feed import BATCH_WORKER_THREAD

    thread = threading.Thread(target=target, name=BATCH_WORKER_THREAD, daemon=True)
    thread.start()
    return thread


def test_closing_the_feed_waits_for_ray_datas_batch_workers_to_finish():
    from h2s_dist.data.ray_feed import _await_batch_workers

    finishing = _named_thread(lambda: time.sleep(0.3))
    _await_batch_workers(timeout_s=5.0)
    assert not finishing.is_alive()


def test_a_batch_worker_that_never_ends_delays_the_close_only_until_the_timeout(caplog):
    from h2s_dist.data.ray_feed import _await_batch_workers

    release = threading.Event()
    stuck = _named_thread(release.wait)
    started = time.monotonic()
    _await_batch_workers(timeout_s=0.2)
    assert time.monotonic() - started < 2.0 and stuck.is_alive()
    assert "still running" in caplog.text
    release.set()
