"""`h2s ui` in headless chromium: the runs page renders MLflow's model-training view with the
job and its stage runs (skipped without Debian's chromium: apt-get install -y chromium)."""

from __future__ import annotations

import socket

import pytest

from bench import ui_screenshots

pytestmark = pytest.mark.skipif(ui_screenshots.find_chromium() is None, reason="no chromium installed")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_runs_page_shows_the_job_and_its_stages_in_the_model_training_view(tracking_uri, tmp_path):
    from h2s_dist.cli import ui_links
    from h2s_dist.tracking import MlflowTracker

    job = MlflowTracker.start(tracking_uri, "ui-browser", run_name="browser-job", tags={"h2s.run_type": "job"})
    MlflowTracker.start(tracking_uri, "ui-browser", run_name="stage-pretrain", parent_run_id=job.run_id).close()
    job.close()
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    server = ui_screenshots.start_ui(tracking_uri, port, tmp_path / "ui.log")
    browser = ui_screenshots.Browser(ui_screenshots.find_chromium(), str(tmp_path / "profile"))
    try:
        browser.open(ui_links(tracking_uri, base_url)[0][1], settle_s=10)
        browser.evaluate(ui_screenshots.EXPAND_RUNS_JS)
        text = browser.evaluate("new Promise(done => setTimeout(() => done(document.body.innerText), 2000))")
    finally:
        browser.close()
        ui_screenshots.stop(server)
    # MLflow 3.17's sidebar lists the model registry in the model-training view only (GenAI: traces, prompts...).
    assert "Model registry" in text, f"not the model-training view:\n{text}"
    assert "browser-job" in text and "stage-pretrain" in text
