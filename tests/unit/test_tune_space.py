"""Search spaces as data: validation naming file and field, the Ray Tune objects, the tune
stage's spec checks, and the TuneSession's reports (no Ray cluster started)."""

from __future__ import annotations

import pathlib

import pytest

from h2s_dist import tune_spaces
from h2s_dist.specs.training import PretrainSpec

REPO = pathlib.Path(__file__).resolve().parents[2]
TRIAL = {"kind": "pretrain_motionnet", "data": {"dataset": "${data.dataset}"}, "loop": {"max_steps": 30}}


def test_dotted_paths_turn_into_tune_objects():
    from ray import tune
    from ray.tune.search.sample import Categorical, Float, Integer

    space = tune_spaces.parse_search_space({
        "loss.smoothness_weight": {"loguniform": [0.1, 10]},
        "optim.lr": {"uniform": [1e-5, 1e-3]},
        "unsup_weight": {"choice": [0.1, 1.0]},
        "loop.seed": {"randint": [0, 5]},
        "loss.pixel_alpha": {"grid": [0.3, 0.4]},
    })
    params = tune_spaces.to_param_space(space)
    assert isinstance(params["loss.smoothness_weight"], Float)
    assert (params["loss.smoothness_weight"].lower, params["loss.smoothness_weight"].upper) == (0.1, 10)
    assert isinstance(params["loss.smoothness_weight"].sampler, Float._LogUniform)
    assert isinstance(params["optim.lr"].sampler, Float._Uniform)
    assert isinstance(params["unsup_weight"], Categorical) and params["unsup_weight"].categories == [0.1, 1.0]
    assert isinstance(params["loop.seed"], Integer) and params["loop.seed"].upper == 5
    assert params["loss.pixel_alpha"] == tune.grid_search([0.3, 0.4])


def test_sampled_loguniform_values_stay_in_range():
    params = tune_spaces.to_param_space(tune_spaces.parse_search_space({"optim.lr": {"loguniform": [1e-5, 1e-3]}}))
    values = params["optim.lr"].sample(size=200, random_state=0)
    assert all(1e-5 <= v <= 1e-3 for v in values)
    assert sum(v < 1e-4 for v in values) > 50  # log scale: half the draws below the geometric middle


def test_apply_config_sets_dotted_paths_and_keeps_other_fields():
    data = tune_spaces.apply_config(TRIAL, {"loss.smoothness_weight": 3.0, "optim.lr": 1e-4})
    spec = PretrainSpec.model_validate(data)
    assert spec.loss.smoothness_weight == 3.0 and spec.optim.lr == 1e-4
    assert spec.optim.name == "adam"  # partial nested spec keeps the stage's defaults
    assert "loss" not in TRIAL  # the original is untouched


@pytest.mark.parametrize(
    "space, expected",
    [
        ({"optim.lr": {"loguniform": [0.0, 1e-3]}}, "space.optim.lr: Value error, loguniform: low must be > 0"),
        ({"optim.lr": {"uniform": [1.0, 0.5]}}, "must be below high"),
        ({"optim.lr": {"uniform": [0.1, 0.5], "choice": [1]}}, "exactly one distribution (got 2)"),
        ({"optim.lr": {"gaussian": [0, 1]}}, "space.optim.lr.gaussian: Extra inputs are not permitted"),
        ({"optim.lr": {"choice": []}}, "space.optim.lr.choice: List should have at least 1 item"),
    ],
)
def test_malformed_distributions_name_the_field(space, expected):
    with pytest.raises(tune_spaces.SearchSpaceError) as err:
        tune_spaces.parse_search_space(space, source="tune/x.yaml")
    assert str(err.value).startswith("tune/x.yaml: ")
    assert expected in str(err.value)


def test_paths_and_values_the_trial_refuses_are_errors():
    space = tune_spaces.parse_search_space({
        "loss.smoothness_weigth": {"uniform": [0.1, 1.0]},
        "loss.pixel_weight": {"uniform": [-1.0, 1.0]},
    })
    with pytest.raises(tune_spaces.SearchSpaceError) as err:
        tune_spaces.check_against_trial(space, PretrainSpec, TRIAL, "tune/x.yaml")
    text = str(err.value)
    assert "tune/x.yaml: space.loss.smoothness_weigth: value 0.1 is refused by the trial spec at loss.smoothness_weigth: Extra inputs" in text
    assert "space.loss.pixel_weight: value -1.0 is refused" in text and "greater than or equal to 0" in text


def test_space_of_another_kind_is_refused():
    space = tune_spaces.parse_search_space({"kind": "finetune_stacked", "space": {"optim.lr": {"uniform": [0.1, 0.2]}}})
    with pytest.raises(tune_spaces.SearchSpaceError, match="the space is for 'finetune_stacked' trials"):
        tune_spaces.check_against_trial(space, PretrainSpec, TRIAL)


@pytest.mark.parametrize("name", ["pretrain_motionnet", "pretrain_losses", "finetune_stacked", "quickstart"])
def test_shipped_search_spaces_validate_against_their_trial_kind(name):
    from h2s_dist.specs.driver import TRIAL_SPECS

    space = tune_spaces.read_search_space(str(REPO / "tune" / f"{name}.yaml"))
    tune_spaces.check_against_trial(space, TRIAL_SPECS[space.kind], {"kind": space.kind, "data": {"dataset": "x"}})
    assert tune_spaces.to_param_space(space).keys() == space.space.keys()


def test_loss_options_space_searches_every_option_and_validates_against_pretrain_spec():
    space = tune_spaces.read_search_space(str(REPO / "tune" / "pretrain_losses.yaml"))
    assert space.kind == "pretrain_motionnet"
    options = {"loss.photometric", "loss.smoothness", "loss.edge_weight", "loss.occlusion", "loss.normalisation"}
    assert options <= set(space.space)
    # Both ends of every range and every choice must be values PretrainSpec accepts.
    tune_spaces.check_against_trial(space, PretrainSpec, TRIAL, "tune/pretrain_losses.yaml")
    sampled = {"loss.photometric": "census", "loss.occlusion": "forward_backward", "loss.smoothness": "edge_aware_second"}
    loss = PretrainSpec.model_validate(tune_spaces.apply_config(TRIAL, sampled)).loss
    assert (loss.photometric, loss.occlusion, loss.smoothness) == ("census", "forward_backward", "edge_aware_second")
    bad = tune_spaces.parse_search_space({"kind": "pretrain_motionnet", "space": {"loss.photometric": {"choice": ["ssd"]}}})
    with pytest.raises(tune_spaces.SearchSpaceError, match="space.loss.photometric: value 'ssd' is refused"):
        tune_spaces.check_against_trial(bad, PretrainSpec, TRIAL)


def test_tune_stage_spec_checks_inline_space_and_asha_budget():
    from pydantic import ValidationError

    from h2s_dist.specs.driver import TuneSpec

    spec = TuneSpec.model_validate({"trial": TRIAL, "search_space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}})
    assert spec.trial.kind == "pretrain_motionnet" and spec.asha.grace_period_steps == 10
    with pytest.raises(ValidationError, match="search_space: space.optim.lrr"):
        TuneSpec.model_validate({"trial": TRIAL, "search_space": {"optim.lrr": {"loguniform": [1e-4, 1e-2]}}})
    with pytest.raises(ValidationError, match="grace_period_steps .50. exceeds trial.loop.max_steps .30."):
        TuneSpec.model_validate({"trial": TRIAL, "search_space": "tune/quickstart.yaml", "asha": {"grace_period_steps": 50}})
    with pytest.raises(ValidationError, match="trial.pretrain_motionnet.optim.lr"):
        TuneSpec.model_validate({"trial": {**TRIAL, "optim": {"lr": -1}}, "search_space": "tune/quickstart.yaml"})


@pytest.mark.parametrize("scaling, gpus, problem", [
    ({"num_workers": 0, "use_gpu": True}, 0.0, "gives no GPU; set gpus_per_trial"),
    ({"num_workers": 0, "use_gpu": False}, 1.0, "reserves GPUs the trial never uses"),
    ({"num_workers": 2, "use_gpu": True}, 1.0, "does not train .* set gpus_per_trial: 0"),
    ({"num_workers": 0, "use_gpu": True}, 0.5, None),   # two in-process trials share a GPU
    ({"num_workers": 2, "use_gpu": True}, 0.0, None),   # the workers reserve one GPU each
    ({"num_workers": 0, "use_gpu": False}, 0.0, None),
])
def test_trial_gpus_are_checked_against_where_the_trial_trains(scaling, gpus, problem):
    from pydantic import ValidationError

    from h2s_dist.specs.driver import TuneSpec

    data = {"trial": {**TRIAL, "scaling": scaling}, "search_space": "tune/quickstart.yaml", "gpus_per_trial": gpus}
    if problem is None:
        TuneSpec.model_validate(data)
    else:
        with pytest.raises(ValidationError, match=problem):
            TuneSpec.model_validate(data)


def test_tune_session_reports_every_log_step_once_with_step(tmp_path):
    from h2s_dist.train.tune_session import TuneSession

    sent = []
    session = TuneSession(str(tmp_path / "ckpt"), "hash", report_to=sent.append)
    session.report_metrics({"loss/total": 2.0}, step=10)
    session.report({"loss/total": 2.0}, {"step": 10, "spec_hash": "hash"}, step=10)  # same step: no second report
    session.report({"loss/total": 1.5}, {"step": 20, "spec_hash": "hash"}, step=20)  # a loop without the hook
    assert sent == [{"loss/total": 2.0, "step": 10}, {"loss/total": 1.5, "step": 20}]
    assert session.latest_checkpoint_uri().endswith("step_000000020/state.pt")
    session.report({"loss/total": 1.0}, {"step": 30, "spec_hash": "hash"}, step=30)  # keeps the last 2
    session.wait()  # checkpoints are written in the background
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step_000000020", "step_000000030"]


def test_tune_session_holds_the_final_report_until_flush(tmp_path):
    from h2s_dist.train.tune_session import TuneSession

    sent = []
    session = TuneSession(str(tmp_path / "ckpt"), "hash", report_to=sent.append, final_step=20)
    session.report_metrics({"loss/total": 2.0}, step=10)
    session.report_metrics({"loss/total": 1.0}, step=20)
    session.report({"loss/total": 1.0}, {"step": 20, "spec_hash": "hash"}, step=20)
    assert sent == [{"loss/total": 2.0, "step": 10}]  # Tune could stop the trial here: weights not yet written
    session.flush()
    session.flush()
    assert sent[-1] == {"loss/total": 1.0, "step": 20} and len(sent) == 2


def test_trial_folder_of_another_sample_is_cleared_before_reuse(tmp_path):
    """After a restore, a searcher without a seed draws new values under an old trial id:
    the old sample's checkpoints must not be resumed into the new one."""
    from h2s_dist.train.stages import tune as tune_stage

    setup = {"tracking": {"uri": None, "run_id": None}}
    folder = tmp_path / "trials" / "abc_00001"
    tune_stage._claim_folder(str(folder), {"optim.lr": 0.001}, setup)
    (folder / "checkpoints" / "step_000000010").mkdir(parents=True)
    (folder / "checkpoints" / "step_000000010" / "state.pt").write_bytes(b"old")
    tune_stage._claim_folder(str(folder), {"optim.lr": 0.001}, setup)  # same sample: kept
    assert (folder / "checkpoints" / "step_000000010" / "state.pt").is_file()
    tune_stage._claim_folder(str(folder), {"optim.lr": 0.002}, setup)  # another sample: cleared
    assert not (folder / "checkpoints" / "step_000000010" / "state.pt").exists()
    assert (folder / tune_stage.CONFIG_FILE).read_text() == '{"optim.lr": 0.002}'


def test_final_report_comes_from_the_trials_outputs():
    from h2s_dist.train.stages.tune import _final_report

    outputs = {"metrics": {"loss/total": 1.5, "train/top1": 0.25}, "steps": 60, "checkpoint": "x"}
    assert _final_report(outputs) == {"loss/total": 1.5, "train/top1": 0.25, "step": 60}
