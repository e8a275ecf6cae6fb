"""`h2s ui` links open MLflow's model-training view (runs, charts), not the GenAI one."""

from urllib.parse import parse_qs

from h2s_dist.tracking import ui_run_url, ui_runs_url


def _query(url: str) -> dict[str, list[str]]:
    return parse_qs(url.split("?", 1)[1])


def test_runs_url_asks_for_the_model_training_view():
    url = ui_runs_url("http://127.0.0.1:5000/", "7")
    assert url.startswith("http://127.0.0.1:5000/#/experiments/7/runs?")
    assert _query(url) == {"workflowType": ["machine_learning"]}


def test_stage_runs_url_carries_the_filter_and_the_chart_mode():
    url = ui_runs_url("http://127.0.0.1:5000", "7", "tags.mlflow.parentRunId = 'abc'", charts=True)
    assert _query(url) == {"workflowType": ["machine_learning"], "searchFilter": ["tags.mlflow.parentRunId = 'abc'"],
                           "compareRunsMode": ["CHART"]}


def test_run_url_points_at_a_tab_of_the_run_page():
    url = ui_run_url("http://127.0.0.1:5000", "7", "r1", "artifacts/flows/step_0000040.png")
    assert url == "http://127.0.0.1:5000/#/experiments/7/runs/r1/artifacts/flows/step_0000040.png?workflowType=machine_learning"
