"""Job specs: every spec in jobs/ validates; errors name the file and the field path;
`--set` overrides; references; the JSON schema; the generated reference is current."""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest
import yaml

from h2s_dist import cli
from h2s_dist import config as cfg

REPO = pathlib.Path(__file__).resolve().parents[2]
JOBS = sorted((REPO / "jobs").glob("*.yaml"))

BASE = """\
name: t
stages:
  - name: data
    kind: ingest
    source: synthetic
  - name: pretrain
    kind: pretrain_motionnet
    needs: [data]
    data: {dataset: "${data.dataset}"}
    optim: {name: adam, lr: 0.001}
  - name: finetune
    kind: finetune_stacked
    needs: [data, pretrain]
    motionnet_weights: "${stages.pretrain.outputs.motionnet}"
    data: {dataset: "${data.dataset}"}
"""


def write(tmp_path: pathlib.Path, text: str, name: str = "x.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems_for(tmp_path: pathlib.Path, text: str, overrides=()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(cfg.JobSpecError) as info:
        cfg.load_job(path, overrides)
    return str(info.value).replace(str(path), "jobs/x.yaml")


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_spec_in_jobs_validates(path):
    job = cfg.load_job(path)
    assert job.stages and job.workspace and job.experiment


def test_jobs_folder_has_the_documented_specs():
    names = {p.name for p in JOBS}
    assert {"quickstart.yaml", "ucf101_split1.yaml", "hmdb51_split1.yaml", "pretrain_unlabeled.yaml", "ablation.yaml",
            "paper_tables.yaml"} <= names


def test_valid_job_gets_defaults(tmp_path):
    job = cfg.load_job(write(tmp_path, BASE))
    assert job.workspace == ".h2s/jobs/t" and job.experiment == "t"
    assert [s.name for s in cfg.topological_order(job.stages)] == ["data", "pretrain", "finetune"]
    spec = cfg.stage_spec_of(job.stage("pretrain"))
    assert type(spec) is cfg.stage_specs()["pretrain_motionnet"]


def test_out_of_range_value_names_file_and_field(tmp_path):
    text = BASE.replace("lr: 0.001", "lr: -1")
    assert problems_for(tmp_path, text) == "jobs/x.yaml: stages[1].optim.lr: Input should be greater than 0"


def test_what_the_networks_refuse_is_an_error_at_validation_naming_the_field(tmp_path):
    # MotionNet halves H and W five times: a 48 px crop would fail minutes later on the workers.
    text = BASE.replace('data: {dataset: "${data.dataset}"}\n    optim', 'data: {dataset: "${data.dataset}", crop_size: 48}\n    optim')
    message = problems_for(tmp_path, text)
    assert "jobs/x.yaml: stages[1].data.crop_size: MotionNet needs crops whose side is a multiple of 32, got 48" in message
    assert "use 32 or 64" in message
    spatial = BASE + "  - {name: rgb, kind: train_spatial, needs: [data], data: {dataset: x, crop_size: 16}}\n"
    assert "stages[3].data.crop_size: VGG16 needs inputs of at least 32 px" in problems_for(tmp_path, spatial)
    flows = BASE + "  - {name: tv, kind: train_temporal_flows, flows: x, data: {clip_len_frames: 1}}\n"
    assert "stages[3].data.clip_len_frames: a flow stack needs clips of at least 2 frames" in problems_for(tmp_path, flows)


def test_weights_handed_between_stages_must_fit_the_network_that_reads_them(tmp_path):
    # A 7-frame MotionNet cannot load an 11-frame one's conv1 (33 vs 21 input channels).
    text = BASE.replace('motionnet_weights: "${stages.pretrain.outputs.motionnet}"\n    data: {dataset: "${data.dataset}"}',
                        'motionnet_weights: "${stages.pretrain.outputs.motionnet}"\n    data: {dataset: "${data.dataset}", clip_len_frames: 7}')
    message = problems_for(tmp_path, text)
    assert ("jobs/x.yaml: stages[2].motionnet_weights: pretrain.motionnet holds a network with clip_len_frames 11 "
            "(stages[1]), but this stage builds one with clip_len_frames 7") in message
    flavours = BASE.replace("    optim: {name: adam, lr: 0.001}", "    optim: {name: adam, lr: 0.001}\n    motionnet: {flavour: tiny}")
    assert "stages[2].motionnet_weights: pretrain.motionnet holds a network with motionnet.flavour 'tiny'" in \
        problems_for(tmp_path, flavours)
    agreeing = flavours.replace("    motionnet_weights:", "    motionnet: {flavour: tiny}\n    motionnet_weights:")
    assert cfg.load_job(write(tmp_path, agreeing)).stage("finetune").motionnet.flavour == "tiny"


def test_network_limits_agree_with_the_networks():
    import torch

    from h2s_dist.models import build_motionnet
    from h2s_dist.models.limits import motionnet_problems

    net = build_motionnet("tiny", num_frames=2)
    assert motionnet_problems(64, 2) == []
    net(torch.zeros(1, 2, 3, 64, 64))
    assert motionnet_problems(48, 2)
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 2, 3, 48, 48))


def test_unknown_field_is_an_error_not_dropped(tmp_path):
    text = BASE.replace("lr: 0.001", "lr: 0.001, lrr: 2")
    assert problems_for(tmp_path, text) == "jobs/x.yaml: stages[1].optim.lrr: Extra inputs are not permitted"


def test_wrong_type_names_the_field(tmp_path):
    text = BASE + "    loop: {max_steps: many}\n"
    assert problems_for(tmp_path, text).startswith("jobs/x.yaml: stages[2].loop.max_steps: Input should be a valid integer")


def test_unknown_job_field_and_unknown_kind(tmp_path):
    text = BASE.replace("name: t\n", "name: t\nworkspce: /tmp\n").replace("kind: ingest", "kind: injest")
    message = problems_for(tmp_path, text)
    assert "jobs/x.yaml: workspce: Extra inputs are not permitted" in message
    assert "jobs/x.yaml: stages[0].kind: unknown stage kind 'injest'" in message


def test_unknown_stage_in_needs_names_the_entry(tmp_path):
    text = BASE.replace("needs: [data, pretrain]", "needs: [data, pretrian]")
    message = problems_for(tmp_path, text)
    assert message.startswith("jobs/x.yaml: stages[2].needs[1]: unknown stage 'pretrian'")


def test_duplicate_stage_names_are_refused(tmp_path):
    text = BASE.replace("  - name: finetune", "  - name: pretrain")
    assert "jobs/x.yaml: stages[2].name: duplicate stage name 'pretrain' (also stages[1])" in problems_for(tmp_path, text)


def test_dependency_cycle_is_refused(tmp_path):
    text = BASE.replace("    kind: ingest\n", "    kind: ingest\n    needs: [finetune]\n")
    message = problems_for(tmp_path, text)
    assert "stages[" in message and "dependency cycle:" in message
    assert all(name in message for name in ("data", "finetune"))


def test_reference_to_stage_not_in_needs_is_refused(tmp_path):
    text = BASE.replace("needs: [data, pretrain]", "needs: [data]")
    assert problems_for(tmp_path, text) == (
        "jobs/x.yaml: stages[2].motionnet_weights: refers to stage 'pretrain' (output 'motionnet'), "
        "which is not in this stage's needs; add it to needs"
    )


def test_unreadable_yaml_names_the_file(tmp_path):
    assert problems_for(tmp_path, "name: [unclosed\n").startswith("jobs/x.yaml: not valid YAML")


def test_set_overrides_pick_stages_by_name_or_index_and_parse_yaml(tmp_path):
    path = write(tmp_path, BASE)
    job = cfg.load_job(path, [
        "stages.pretrain.loop.max_steps=10",       # creates `loop`, absent in the file
        "stages.1.optim.lr=2e-3",                  # by index
        "stages[2].loop.max_steps=3",              # the same, with brackets
        "stages.finetune.data.crop_size=64",
        "stages.data.synthetic={num_videos: 9}",   # a YAML mapping
        "workspace=/tmp/ws",
    ])
    pretrain = job.stage("pretrain")
    assert pretrain.loop.max_steps == 10 and pretrain.optim.lr == 2e-3
    assert job.stage("finetune").data.crop_size == 64 and job.stage("finetune").loop.max_steps == 3
    assert job.stage("data").synthetic.num_videos == 9
    assert job.workspace == "/tmp/ws"


def test_set_override_errors_name_the_override(tmp_path):
    assert "--set stages.nope.loop.max_steps=1: stages.nope: no item with index or name 'nope'" in problems_for(
        tmp_path, BASE, ["stages.nope.loop.max_steps=1"]
    )
    assert "expected KEY.PATH=VALUE" in problems_for(tmp_path, BASE, ["stages.pretrain.loop"])
    assert "jobs/x.yaml: stages[1].optim.lr: Input should be greater than 0" in problems_for(
        tmp_path, BASE, ["stages.pretrain.optim.lr=0"]
    )


def test_reference_resolution_keeps_types_and_interpolates_text():
    outputs = {"pretrain": {"motionnet": "s3://b/w.pt", "steps": 150, "metrics": {"loss/total": 0.5}}}
    data = {
        "a": "${pretrain.motionnet}", "b": "${stages.pretrain.outputs.steps}", "c": "run-${pretrain.steps}",
        "d": ["${pretrain.metrics.loss/total}"], "e": "plain",
    }
    assert cfg.resolve_references(data, outputs) == {"a": "s3://b/w.pt", "b": 150, "c": "run-150", "d": [0.5], "e": "plain"}


def test_reference_to_missing_output_names_the_field_and_the_known_outputs():
    with pytest.raises(cfg.JobSpecError, match=r"stages\[2\].motionnet_weights: stage 'pretrain' has no output 'motionet'; its outputs are: motionnet"):
        cfg.resolve_references({"motionnet_weights": "${pretrain.motionet}"}, {"pretrain": {"motionnet": "x"}}, "stages[2]")


def test_json_schema_is_a_valid_schema_that_accepts_the_jobs(tmp_path):
    import jsonschema

    schema = cfg.job_json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(yaml.safe_load(BASE))
    bad = yaml.safe_load(BASE)
    bad["stages"][1]["optim"]["lrr"] = 1
    assert list(validator.iter_errors(bad))


def test_schema_command_writes_json(tmp_path):
    out = tmp_path / "schema.json"
    assert cli.main(["schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "JobSpec"


def test_validate_command_prints_resolved_spec_or_errors(tmp_path, capsys):
    path = write(tmp_path, BASE)
    assert cli.main(["validate", str(path), "--set", "stages.pretrain.loop.max_steps=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["stages"][1]["loop"]["max_steps"] == 7 and printed["stages"][1]["name"] == "pretrain"
    assert cli.main(["validate", str(path), "--set", "stages.pretrain.optim.lr=-1"]) == 2
    assert f"{path}: stages[1].optim.lr: Input should be greater than 0" in capsys.readouterr().err


def test_spec_reference_doc_is_current():
    from h2s_dist.pipeline.spec_docs import spec_reference_markdown

    doc = REPO / "docs" / "spec_reference.md"
    assert doc.is_file(), "generate it: h2s schema --markdown -o docs/spec_reference.md"
    assert doc.read_text() == spec_reference_markdown(), (
        "docs/spec_reference.md is stale: regenerate with `h2s schema --markdown -o docs/spec_reference.md`"
    )


def test_submission_ships_the_repo_and_never_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-ship")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    entrypoint, runtime_env = cli.submission(str(REPO / "jobs" / "quickstart.yaml"), ["stages.pretrain.loop.max_steps=5"], [], False, [])
    assert entrypoint == "python -m h2s_dist run jobs/quickstart.yaml --set stages.pretrain.loop.max_steps=5"
    assert runtime_env["working_dir"] == str(REPO)
    assert runtime_env["env_vars"]["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert "AWS_SECRET_ACCESS_KEY" not in runtime_env["env_vars"]
    assert ".venv" in runtime_env["excludes"]


def test_every_command_has_help_with_examples(capsys):
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    assert {"run", "validate", "schema", "submit", "status", "logs", "stop", "runs", "ui", "tracking-server", "ingest",
            "s3-serve"} <= set(commands)
    for name, sub in commands.items():
        assert "example" in (sub.epilog or ""), f"h2s {name} --help has no examples"


INPUTS = """\
name: t
inputs: {ucf101_stacked: s3://models/ucf101/stacked_temporal.pt}
stages:
  - name: data
    kind: ingest
    source: synthetic
  - name: finetune
    kind: finetune_stacked
    needs: [data]
    init_weights: "${inputs.ucf101_stacked}"
    data: {dataset: "${data.dataset}"}
"""


def test_job_inputs_are_replaced_at_load_and_set_from_the_command_line(tmp_path):
    path = write(tmp_path, INPUTS)
    assert cfg.load_job(path).stage("finetune").init_weights == "s3://models/ucf101/stacked_temporal.pt"
    job = cfg.load_job(path, ["inputs.ucf101_stacked=models:/stacked_temporal/3"])
    assert job.stage("finetune").init_weights == "models:/stacked_temporal/3"
    assert job.inputs == {"ucf101_stacked": "models:/stacked_temporal/3"}


def test_an_unknown_job_input_names_the_field_and_the_known_inputs(tmp_path):
    message = problems_for(tmp_path, INPUTS.replace("${inputs.ucf101_stacked}", "${inputs.ucf101_stackd}"))
    assert message.startswith("jobs/x.yaml: stages[1].init_weights: unknown job input 'ucf101_stackd'; "
                              "the job's inputs are: ucf101_stacked")


def test_hmdb51_starts_both_streams_from_ucf101_inputs_without_the_ucf101_run():
    job = cfg.load_job(REPO / "jobs" / "hmdb51_split1.yaml")
    assert job.stage("finetune").init_weights == job.inputs["ucf101_stacked"]
    assert job.stage("spatial").init_weights == job.inputs["ucf101_spatial"]
    assert not job.stage("finetune").motionnet_weights and not job.stage("finetune").vgg_rgb_weights
    registered = cfg.load_job(REPO / "jobs" / "hmdb51_split1.yaml", ["inputs.ucf101_spatial=models:/spatial/2"])
    assert registered.stage("spatial").init_weights == "models:/spatial/2"


def test_ucf101_finetune_starts_its_vgg16_from_the_tvl1_temporal_stream():
    job = cfg.load_job(REPO / "jobs" / "ucf101_split1.yaml")
    finetune = job.stage("finetune")
    assert "temporal_tvl1" in finetune.needs and finetune.vgg_weights == "${temporal_tvl1.tvl1_temporal}"
    assert not finetune.vgg_rgb_weights  # cross-modality init stays with the TV-L1 net
    assert job.stage("temporal_tvl1").vgg_rgb_weights


def test_a_tvl1_temporal_net_on_other_stacks_does_not_start_the_stacked_vgg16(tmp_path):
    message = problems_for(tmp_path, (REPO / "jobs" / "ucf101_split1.yaml").read_text(),
                           ["stages.temporal_tvl1.data.clip_len_frames=6"])
    assert ("stages[2].vgg_weights: temporal_tvl1.tvl1_temporal holds a network with vgg_in_channels 10 "
            "(stages[5]), but this stage builds one with vgg_in_channels 20") in message


def test_a_whole_stacked_stream_excludes_its_parts(tmp_path):
    text = INPUTS.replace('    data: {dataset: "${data.dataset}"}', '    vgg_weights: s3://x.pt\n    data: {dataset: "${data.dataset}"}')
    assert "init_weights (a whole stacked stream) excludes motionnet_weights" in problems_for(tmp_path, text)


TABLE3 = {  # variant: (motionnet switches off, loss terms off), the paper's Table 3 rows
    "all": ((), ()),
    "no_small_disp": (("small_displacement",), ()),
    "no_ssim": ((), ("ssim_weight_scale",)),
    "no_conv_between": (("conv_between_deconv",), ()),
    "no_smooth": ((), ("smoothness_weight",)),
    "none": (("small_displacement", "conv_between_deconv"), ("ssim_weight_scale", "smoothness_weight")),
}


@pytest.mark.parametrize("variant", TABLE3)
def test_ablation_job_has_each_table3_chain_switching_only_its_practices(variant):
    job = cfg.load_job(REPO / "jobs" / "ablation.yaml")
    switches, terms = TABLE3[variant]
    pretrain, finetune = job.stage(f"pretrain_{variant}"), job.stage(f"finetune_{variant}")
    evaluate = job.stage(f"evaluate_{variant}")
    for spec in (pretrain, finetune, evaluate):
        assert {s for s in ("small_displacement", "conv_between_deconv") if not getattr(spec.motionnet, s)} == set(switches)
    for spec in (pretrain, finetune):
        assert {t for t in ("ssim_weight_scale", "smoothness_weight") if getattr(spec.loss, t) == 0} == set(terms)
        assert spec.loss.normalisation == "release" and spec.loss.photometric == "charbonnier"
    assert finetune.vgg_weights == "${temporal_tvl1.tvl1_temporal}" and finetune.mode.value == "action_plus_unsup"
    assert evaluate.stacked_weights == f"${{finetune_{variant}.stacked_temporal}}"


def test_motionnet_flows_need_the_frames_per_input_the_motionnet_was_trained_on(tmp_path):
    text = BASE.split("  - name: finetune")[0] + """\
  - name: flows
    kind: tvl1_flows
    needs: [data, pretrain]
    dataset: "${data.dataset}"
    source: motionnet
    motionnet_weights: "${pretrain.motionnet}"
"""
    assert ("stages[2].motionnet_weights: pretrain.motionnet holds a network with clip_len_frames 11 (stages[1]), "
            "but this stage builds one with clip_len_frames 2") in problems_for(tmp_path, text)
    fixed = text.replace("    source: motionnet\n", "    source: motionnet\n    motionnet_frames: 11\n")
    assert cfg.load_job(write(tmp_path, fixed)).stage("flows").motionnet_frames == 11
