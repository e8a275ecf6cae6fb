"""The `h2s` command: run, validate and submit YAML jobs; look at their MLflow runs.

    h2s run jobs/quickstart.yaml --set stages.pretrain.loop.max_steps=10
    h2s validate jobs/ucf101_split1.yaml
    h2s submit jobs/ucf101_split1.yaml --address http://HEAD:8265
    h2s runs;  h2s ui
    h2s weights convert VGG_ILSVRC_16_layers.caffemodel vgg16_imagenet.pt --from caffe
    h2s predict my_video.mp4 --model quickstart

Every command has `--help` with examples. User errors exit with status 2 and a message
saying what to fix; nothing runs when a spec does not validate.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence

from h2s_dist.ray_env import NEVER_FORWARDED, forwarded_env  # what a job's runtime_env carries

WORKING_DIR_EXCLUDES = [".git", ".venv", ".h2s", "mlruns", "mlartifacts", "**/__pycache__", "*.tar", "*.pt"]


def _fmt(parser_kwargs: dict) -> dict:
    return {"formatter_class": argparse.RawDescriptionHelpFormatter, **parser_kwargs}


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a spec value (VALUE parsed as YAML); stages are picked by name or index, "
        "e.g. stages.pretrain.loop.max_steps=10 (repeatable)",
    )


# ----------------------------------------------------------------------------- run / validate / schema


def cmd_run(args: argparse.Namespace) -> int:
    from h2s_dist.config import load_job
    from h2s_dist.pipeline.runner import default_env, run_job

    default_env()
    job = load_job(args.spec, args.overrides)
    run_job(job, fresh=args.fresh, only=args.only or None, ray_address=args.address)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from h2s_dist.config import job_to_yaml, load_job

    job = load_job(args.spec, args.overrides)
    sys.stdout.write(job_to_yaml(job))
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    import json

    from h2s_dist.config import job_json_schema
    from h2s_dist.pipeline.spec_docs import spec_reference_markdown

    text = spec_reference_markdown() if args.markdown else json.dumps(job_json_schema(), indent=2) + "\n"
    if args.output:
        pathlib.Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


# ----------------------------------------------------------------------------- Ray Jobs


def find_repo_root(start: pathlib.Path) -> pathlib.Path | None:
    """The h2s-dist checkout holding `start` (a folder with pyproject.toml and h2s_dist/)."""
    for folder in [start, *start.parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "h2s_dist").is_dir():
            return folder
    return None


def submission(spec: str, overrides: Sequence[str], extra_env: Sequence[str], fresh: bool, only: Sequence[str]) -> tuple[str, dict]:
    """(entrypoint, runtime_env) of `h2s submit`: the repo (or the spec's folder) is shipped as
    the working dir and the job runs `python -m h2s_dist run <spec> ...` inside it."""
    spec_path = pathlib.Path(spec).resolve()
    root = find_repo_root(spec_path.parent) or spec_path.parent
    relative = spec_path.relative_to(root).as_posix()
    words = ["python", "-m", "h2s_dist", "run", relative]
    for item in overrides:
        words += ["--set", item]
    words += ["--fresh"] if fresh else []
    for name in only:
        words += ["--only", name]
    refused = sorted(set(extra_env) & set(NEVER_FORWARDED))
    if refused:
        raise ValueError(f"--env {refused[0]}: secrets are never shipped with a job (its runtime_env is shown "
                         "by the dashboard); the cluster's nodes get them from a Kubernetes secret or their role")
    env = forwarded_env(extra_env)
    runtime_env = {"working_dir": str(root), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env}
    return shlex.join(words), runtime_env


def _client(address: str):
    """A Jobs API client; it sends the Ray token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) as an Authorization header when RAY_AUTH_MODE=token."""
    from h2s_dist.ray_auth import default_auth_mode, refused_message

    default_auth_mode()
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:  # the client asks for the cluster's version first: a refused token surfaces here
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ValueError(refused_message(address, err.message)) from None


def cmd_submit(args: argparse.Namespace) -> int:
    from h2s_dist.config import load_job
    from h2s_dist.pipeline.layout import check_layout, pinned_overrides

    job = load_job(args.spec, args.overrides)  # refuse a broken spec before shipping anything
    check_layout(job, submitted_to=args.address, source=args.spec)  # and one whose outputs would stay on one node
    overrides = [*args.overrides, *pinned_overrides(job)]  # the workspace and store checked here, not relative ones
    entrypoint, runtime_env = submission(args.spec, overrides, args.env, args.fresh, args.only)
    # Names only: values may be endpoints with tokens in them.
    print(f"entrypoint: {entrypoint}\nworking_dir: {runtime_env['working_dir']}\n"
          f"env: {', '.join(sorted(runtime_env['env_vars'])) or '-'}", file=sys.stderr)
    submission_id = _client(args.address).submit_job(
        entrypoint=entrypoint, runtime_env=runtime_env, submission_id=args.submission_id
    )
    print(submission_id)
    print(f"follow it: h2s logs {submission_id} --address {args.address} --follow", file=sys.stderr)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    info = _client(args.address).get_job_info(args.id)
    print(f"{args.id}: {info.status}" + (f" ({info.message})" if info.message else ""))
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    client = _client(args.address)
    if not args.follow:
        sys.stdout.write(client.get_job_logs(args.id))
        return 0
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(args.id):
            sys.stdout.write(lines)
            sys.stdout.flush()

    asyncio.run(tail())
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    stopped = _client(args.address).stop_job(args.id)
    print(f"{args.id}: {'stop requested' if stopped else 'not running'}")
    return 0


# ----------------------------------------------------------------------------- MLflow


def cmd_runs(args: argparse.Namespace) -> int:
    from h2s_dist.pipeline.report import job_runs_table

    print(job_runs_table(args.tracking_uri, limit=args.limit, experiment=args.experiment))
    return 0


def mlflow_server_command(backend_store_uri: str, port: int, artifacts_destination: str | None = None) -> list[str]:
    """`mlflow server` on 127.0.0.1 with one worker (a sqlite store wants one writer)."""
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifacts_destination:
        command += ["--artifacts-destination", artifacts_destination, "--serve-artifacts"]
    return command


def _serve(command: list[str], open_url: str | None = None, extra_env: Mapping[str, str] | None = None) -> int:
    """Run the MLflow server until it stops or Ctrl-C; open `open_url` in a browser once it answers."""
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(extra_env or {})}
    print("running: " + shlex.join(command), file=sys.stderr)
    server = subprocess.Popen(command, env=env)
    try:
        if open_url is not None and _wait_until_up(open_url.split("/#")[0], server):
            import webbrowser

            webbrowser.open(open_url)
        return server.wait()
    except KeyboardInterrupt:
        server.terminate()
        server.wait()
        return 0


def _wait_until_up(base_url: str, server: subprocess.Popen, timeout_s: float = 120.0) -> bool:
    """True once `base_url`/health answers; False if the server exits first or `timeout_s` passes."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while server.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base_url}/health", timeout=2):
                return True
        except OSError:  # not listening yet
            time.sleep(0.5)
    return False


def cmd_ui(args: argparse.Namespace) -> int:
    from h2s_dist.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        print(f"{uri} is a tracking server already: open it in a browser", file=sys.stderr)
        return 0
    base = f"http://127.0.0.1:{args.port}"
    print(f"MLflow UI for {uri} at {base}", file=sys.stderr)
    links = ui_links(uri, base)
    for label, url in links:
        print(f"  {label}: {url}", file=sys.stderr)
    return _serve(mlflow_server_command(uri, args.port), open_url=links[0][1] if args.open else None)


def ui_links(tracking_uri: str, base_url: str) -> list[tuple[str, str]]:
    """[(label, URL)] of the MLflow UI pages worth opening first, in the model-training view:
    the newest job's experiment (jobs with their stages nested), that job's stage runs with
    their metrics, and their metric charts. Just the experiments list when the store has no job."""
    from h2s_dist.pipeline.report import open_reader
    from h2s_dist.pipeline.run_rows import stage_runs_filter
    from h2s_dist.tracking import ui_runs_url

    reader = open_reader(tracking_uri)
    experiment_ids = reader.experiment_ids(None)
    newest = reader.job_runs(experiment_ids, 1) if experiment_ids else []
    if not newest:
        return [("experiments (no h2s job in this store yet)", f"{base_url}/#/experiments")]
    job = newest[0]
    stages = stage_runs_filter(job.run_id)
    return [
        (f"runs of the newest job {job.run_name!r} and the jobs before it", ui_runs_url(base_url, job.experiment_id)),
        ("its stage runs with their metrics", ui_runs_url(base_url, job.experiment_id, stages)),
        ("its stage runs' metric charts", ui_runs_url(base_url, job.experiment_id, stages, charts=True)),
    ]


def cmd_tracking_server(args: argparse.Namespace) -> int:
    from h2s_dist.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri(args.backend_store_uri)
    command = mlflow_server_command(uri, args.port, args.artifacts_destination)
    env = basic_auth_env(os.environ, args.auth_db) if args.basic_auth else {}
    if args.basic_auth:
        command += ["--app-name", "basic-auth"]
    print(f"MLflow tracking server at http://127.0.0.1:{args.port} (store {uri}, artifacts "
          f"{args.artifacts_destination}{', basic auth' if args.basic_auth else ''}); jobs use it with "
          f"tracking_uri: http://127.0.0.1:{args.port}"
          + (" and MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" if args.basic_auth else ""), file=sys.stderr)
    return _serve(command, extra_env=env)


def basic_auth_env(environ: Mapping[str, str], auth_db: str) -> dict[str, str]:
    """Environment of `mlflow server --app-name basic-auth`: MLflow (3.17) reads the admin's
    credentials from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD when it first
    creates its user store, and its CSRF key from MLFLOW_FLASK_SERVER_SECRET_KEY; the user
    store's location comes from an ini file named by MLFLOW_AUTH_CONFIG_PATH (default: a
    basic_auth.db in whatever folder the server starts in, so we name one)."""
    import secrets
    import tempfile

    if len(environ.get("MLFLOW_AUTH_ADMIN_PASSWORD", "")) < 12:  # MLflow refuses shorter ones, after a slow start
        raise ValueError("--basic-auth needs the admin's password (12+ characters) in MLFLOW_AUTH_ADMIN_PASSWORD (and, "
                         "optionally, the name in MLFLOW_AUTH_ADMIN_USERNAME, default admin): MLflow ships no default password")
    auth_db_uri = auth_db
    if "://" not in auth_db:  # a path: a sqlite file beside the runs database
        path = pathlib.Path(auth_db).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        auth_db_uri = f"sqlite:///{path}"
    ini = tempfile.NamedTemporaryFile("w", prefix="h2s-mlflow-auth-", suffix=".ini", delete=False)  # noqa: SIM115
    with ini:
        ini.write("[mlflow]\ndefault_permission = READ\n"
                  f"database_uri = {auth_db_uri}\nadmin_username = {environ.get('MLFLOW_AUTH_ADMIN_USERNAME', 'admin')}\n"
                  "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    # One server worker, so a key made here is consistent; set it yourself to keep browser
    # sessions valid across restarts.
    return {"MLFLOW_AUTH_CONFIG_PATH": ini.name,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32)}


def cmd_s3_serve(args: argparse.Namespace) -> int:
    from h2s_dist.data.s3server import serve_forever

    serve_forever(args.directory, port=args.port, bucket=args.bucket)
    return 0


# ----------------------------------------------------------------------------- weights


def cmd_weights_convert(args: argparse.Namespace) -> int:
    from h2s_dist.weights_convert import convert_file

    state = convert_file(args.src, args.dst, args.source, flavour=args.flavour, keep_fc8=not args.drop_fc8)
    fc8 = state.get("classifier.fc8.weight")
    classes = f"fc8 {fc8.shape[0]} classes" if fc8 is not None else "no fc8"
    print(f"wrote {args.dst}: h2s_dist VGG16 ({args.flavour}, {classes}) from {args.source} weights, "
          "conv1_1 folded to our input (RGB, (pixel - mean) / 255)", file=sys.stderr)
    print(f"use it as init_weights (spatial stream) or vgg_rgb_weights (temporal streams): {args.dst}", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- predict


def flow_video_path(out: str, video: str, num_videos: int) -> str:
    """--flow-video's path for one of the videos: as given for one video, `<stem>_<video stem><suffix>` for several."""
    if num_videos == 1:
        return out
    path = pathlib.Path(out)
    return str(path.with_name(f"{path.stem}_{pathlib.Path(video).stem}{path.suffix}"))


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from h2s_dist.predict import (PredictError, format_prediction, load_model, predict_video, quantise_for_cpu,
                                  write_flow_video)

    model = load_model(args.model, tracking_uri=args.tracking_uri, device=args.device,
                       num_windows=args.windows, num_crops=args.crops)
    height, width = model.frame_size
    print(f"model: {model.kind} stage {model.stage_uri}; {len(model.classes)} classes, streams "
          f"{' + '.join(model.networks)}, frames resized to {width}x{height}, crops {model.crop_size}, "
          f"device {model.device}", file=sys.stderr)
    if args.int8:
        count = quantise_for_cpu(model)
        print(f"int8: convolutions and fc layers quantised, calibrated on {count} clips of training videos of "
              f"{model.dataset_uri}", file=sys.stderr)
    failed = 0
    for video in args.videos:
        try:
            result = predict_video(model, video, fast=args.fast, top_k=args.top)
            if args.json:
                print(json.dumps({"video": result.path, "top": result.top, "fps": result.fps_scored,
                                  "frames": result.num_frames, "method": result.method, "seconds": result.seconds}))
            else:
                print(format_prediction(result))
            if args.flow_video:
                out = flow_video_path(args.flow_video, video, len(args.videos))
                count = write_flow_video(model, video, out)
                print(f"  flow video: {out} ({count} frames: each frame beside MotionNet's flow to the next)")
        except PredictError as err:
            print(f"error: {err}", file=sys.stderr)
            failed += 1
    return 2 if failed else 0


def cmd_export(args: argparse.Namespace) -> int:
    from h2s_dist.inference import PROGRAM_FILE, export_model
    from h2s_dist.predict import load_model

    model = load_model(args.model, tracking_uri=args.tracking_uri, device="cpu")
    metadata = export_model(model, args.out)
    print(f"wrote {args.out}/{PROGRAM_FILE} (torch.export of {model.kind} stage {model.stage_uri}: uint8 clips "
          f"{metadata['input']['shape']} -> fused scores over {len(model.classes)} classes) and model.json; "
          "load it with torch.export.load(path).module()")
    return 0


# ----------------------------------------------------------------------------- parser

_RUN_EXAMPLES = """examples:
  h2s run jobs/quickstart.yaml
  h2s run jobs/quickstart.yaml --set stages.pretrain.loop.max_steps=10 --set workspace=/tmp/h2s
  h2s run jobs/ucf101_split1.yaml --address ray://head:10001 --only finetune
  h2s run jobs/quickstart.yaml --fresh          (rerun every stage from scratch)

Stages whose output (same spec, same inputs) is complete are reused; rerunning a command
that crashed resumes the interrupted stage from its last checkpoint.
"""
_VALIDATE_EXAMPLES = """examples:
  h2s validate jobs/quickstart.yaml
  h2s validate jobs/ucf101_split1.yaml --set stages.finetune.optim.lr=1e-4

Prints the spec with every default filled in, or each error as FILE: FIELD.PATH: message
(exit status 2).
"""
_SCHEMA_EXAMPLES = """examples:
  h2s schema -o jobspec.schema.json       (for editors: yaml-language-server $schema=...)
  h2s schema --markdown -o docs/spec_reference.md
"""
_SUBMIT_EXAMPLES = """examples:
  h2s submit jobs/ucf101_split1.yaml --address http://head:8265
  h2s submit jobs/pretrain_unlabeled.yaml --address http://head:8265 --set stages.pretrain.scaling.num_workers=16
  h2s submit jobs/ucf101_split1.yaml --address http://head:8265 --env AWS_PROFILE

Ships this checkout (or the spec's folder) as the job's working_dir and runs
`python -m h2s_dist run SPEC ...` on the cluster. MLFLOW_TRACKING_URI, AWS_ENDPOINT_URL(_S3),
AWS_REGION, AWS_PROFILE and H2S_S3_ENDPOINT_URL are forwarded when set; credentials
(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...) are not: give the cluster its own, or
forward a variable by name with --env at your own risk (runtime_env is visible in the
Ray dashboard).
"""
_JOB_EXAMPLES = """examples:
  h2s status raysubmit_XYZ --address http://head:8265
  h2s logs raysubmit_XYZ --address http://head:8265 --follow
  h2s stop raysubmit_XYZ --address http://head:8265
"""
_RUNS_EXAMPLES = """examples:
  h2s runs
  h2s runs --tracking-uri http://127.0.0.1:5000 --limit 5
"""
_UI_EXAMPLES = """examples:
  h2s ui                                   (the local store .h2s/mlflow.db, on http://127.0.0.1:5000)
  h2s ui --tracking-uri sqlite:////data/h2s/mlflow.db --port 5001
  h2s ui --open                            (and open the newest job's runs page in a browser)
It prints the links of the newest job: its experiment's runs, its stage runs and their
metric charts, all in MLflow's model-training view (?workflowType=machine_learning; MLflow 3
otherwise opens the GenAI view of traces).
Reach it from another machine through an SSH tunnel: ssh -L 5000:127.0.0.1:5000 HOST
"""
_SERVER_EXAMPLES = """examples:
  h2s tracking-server --backend-store-uri sqlite:///.h2s/server.db --artifacts-destination s3://bucket/mlflow
  h2s tracking-server --backend-store-uri sqlite:////data/mlflow.db --artifacts-destination /data/mlartifacts --port 5001
  MLFLOW_AUTH_ADMIN_PASSWORD=... h2s tracking-server --basic-auth      # every request needs a user and password
Then set tracking_uri: http://127.0.0.1:5000 in a job (or MLFLOW_TRACKING_URI); with --basic-auth, jobs
and h2s runs send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.
"""
_WEIGHTS_EXAMPLES = """examples:
  h2s weights convert vgg16-397923af.pth vgg16_imagenet.pt --from torchvision
  h2s weights convert VGG_ILSVRC_16_layers.caffemodel s3://h2s-models/vgg16_imagenet.pt --from caffe
  h2s weights convert tiny_vgg.caffemodel /tmp/tiny_vgg.pt --from caffe --flavour tiny --drop-fc8

Writes a state dict of our VGG16 whose conv1_1 expects our input (RGB, (pixel - mean) / 255,
mean 123, 117, 104): Caffe's BGR 0..255 and torchvision's [0, 1] / std are folded into it.
fc8 keeps the source's classes (1000); a network with another class count leaves it out
when loading. Use the file as init_weights (spatial) or vgg_rgb_weights (temporal).
"""
_PREDICT_EXAMPLES = """examples:
  h2s predict ../shared/data/videos/UCF-101_Rowing_g16_c03.avi --model quickstart
  h2s predict a.mp4 b.avi --model .h2s/jobs/ucf101_split1 --fast
  h2s predict a.mp4 b.avi --model .h2s/jobs/ucf101_split1 --int8      (CPU: int8 networks)
  h2s predict clip.mp4 --model .h2s/jobs/quickstart/evaluate-0123abcd --flow-video clip_flow.mp4
  h2s predict clip.mp4 --model 3f2a... --tracking-uri sqlite:////data/mlflow.db   (an MLflow run id)

--model names a finished evaluate, finetune_stacked or train_spatial stage: its folder (with
outputs.json and spec.json), a job's workspace or a job name (.h2s/jobs/NAME: its newest
evaluate stage, else finetune, else spatial), or an MLflow run id (a stage run's h2s.output,
a job run's h2s.workspace). The stage's spec gives the networks, clip length, crop size and
the dataset (its classes and frame size); an evaluate stage also its windows x crops and
fusion. Both streams: the hidden two-stream fusion's probabilities; speed in frames per
second, decode to scores (10 frames per 11-frame window, as the evaluate stage counts).
A video that cannot be read is named on stderr and the exit status is 2.
"""

_EXPORT_EXAMPLES = """examples:
  h2s export --model quickstart --out exported/quickstart
  h2s export --model .h2s/jobs/ucf101_split1/evaluate-0123abcd --out /models/h2s-ucf101

--model is read as for h2s predict (a job name, workspace, evaluate stage folder or MLflow
run id); the stage must have both streams. DIR gets hidden_two_stream.pt2 (the uint8 clips
of one video in, fused class scores out; the number of clips may vary) and model.json (the
classes, the input shape, the stage it came from). Load it without h2s:
  torch.export.load("DIR/hidden_two_stream.pt2").module()(clips)
"""
_S3_EXAMPLES = """examples:
  h2s s3-serve /data/s3 --port 9000
Serves DIR's sub-folders as buckets on 127.0.0.1 (for tests and single-machine setups) and
prints the variables to export in the shells that run jobs.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="h2s", **_fmt({"description": __doc__.split("\n\n")[0], "epilog": (
        "run `h2s COMMAND --help` for each command's options and examples")}))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run a job spec here (stages reused or resumed)", **_fmt({"epilog": _RUN_EXAMPLES}))
    run.add_argument("spec", help="YAML job spec, e.g. jobs/quickstart.yaml")
    _add_set(run)
    run.add_argument("--fresh", action="store_true", help="rerun stages even when a finished output exists (deletes it)")
    run.add_argument("--address", help="Ray cluster for multi-worker stages (default: the spec's ray_address, "
                     "$RAY_ADDRESS, else an embedded local Ray)")
    run.add_argument("--only", action="append", default=[], metavar="STAGE",
                     help="run only this stage (repeatable); the stages it needs must have finished")
    run.set_defaults(func=cmd_run)

    validate = commands.add_parser("validate", help="check a job spec and print it resolved", **_fmt({"epilog": _VALIDATE_EXAMPLES}))
    validate.add_argument("spec", help="YAML job spec")
    _add_set(validate)
    validate.set_defaults(func=cmd_validate)

    schema = commands.add_parser("schema", help="write the JSON schema (or the Markdown reference) of job specs",
                                 **_fmt({"epilog": _SCHEMA_EXAMPLES}))
    schema.add_argument("-o", "--output", help="file to write (default: stdout)")
    schema.add_argument("--markdown", action="store_true", help="the field reference in Markdown (docs/spec_reference.md)")
    schema.set_defaults(func=cmd_schema)

    submit = commands.add_parser("submit", help="submit a job spec to a Ray cluster (Ray Jobs API)", **_fmt({"epilog": _SUBMIT_EXAMPLES}))
    submit.add_argument("spec", help="YAML job spec inside this checkout")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://head:8265")
    _add_set(submit)
    submit.add_argument("--fresh", action="store_true", help="pass --fresh to h2s run")
    submit.add_argument("--only", action="append", default=[], metavar="STAGE", help="pass --only STAGE to h2s run")
    submit.add_argument("--env", action="append", default=[], metavar="NAME", help="also forward this environment variable")
    submit.add_argument("--submission-id", help="choose the submission id (default: Ray picks one)")
    submit.set_defaults(func=cmd_submit)

    for name, func, text in (
        ("status", cmd_status, "state of a submitted job"),
        ("logs", cmd_logs, "driver logs of a submitted job"),
        ("stop", cmd_stop, "stop a submitted job"),
    ):
        sub = commands.add_parser(name, help=text, **_fmt({"epilog": _JOB_EXAMPLES}))
        sub.add_argument("id", help="submission id printed by h2s submit")
        sub.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://head:8265")
        if name == "logs":
            sub.add_argument("--follow", "-f", action="store_true", help="keep printing until the job ends")
        sub.set_defaults(func=func)

    runs = commands.add_parser("runs", help="table of recent job runs with each stage's state and key metrics",
                               **_fmt({"epilog": _RUNS_EXAMPLES}))
    runs.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else .h2s/mlflow.db)")
    runs.add_argument("--experiment", help="only this experiment (default: all)")
    runs.add_argument("--limit", type=int, default=10, help="job runs to show (default 10)")
    runs.set_defaults(func=cmd_runs)

    ui = commands.add_parser("ui", help="MLflow UI for a tracking store, on 127.0.0.1", **_fmt({"epilog": _UI_EXAMPLES}))
    ui.add_argument("--tracking-uri", help="store to browse (default: $MLFLOW_TRACKING_URI, else .h2s/mlflow.db)")
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--open", action="store_true", help="open the newest job's runs page in a browser once the server is up")
    ui.set_defaults(func=cmd_ui)

    server = commands.add_parser("tracking-server", help="an MLflow tracking server on 127.0.0.1 for many jobs and workers",
                                 **_fmt({"epilog": _SERVER_EXAMPLES}))
    server.add_argument("--backend-store-uri", default="sqlite:///.h2s/server.db", help="runs database (default %(default)s)")
    server.add_argument("--artifacts-destination", default=str(pathlib.Path(".h2s/server-artifacts").resolve()),
                        help="where artifacts go: a path or s3://bucket/prefix (default %(default)s)")
    server.add_argument("--port", type=int, default=5000)
    server.add_argument("--basic-auth", action="store_true",
                        help="require MLflow's basic auth (admin from MLFLOW_AUTH_ADMIN_USERNAME / MLFLOW_AUTH_ADMIN_PASSWORD; "
                        "clients send MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")
    server.add_argument("--auth-db", default=".h2s/server-auth.db",
                        help="users and permissions of --basic-auth: a path (sqlite) or a database URI (default %(default)s)")
    server.set_defaults(func=cmd_tracking_server)

    from h2s_dist.data.ingest_cli import add_ingest_parser

    add_ingest_parser(commands)

    weights = commands.add_parser("weights", help="convert pretrained weights into ours (h2s weights convert)",
                                  **_fmt({"epilog": _WEIGHTS_EXAMPLES}))
    weights_commands = weights.add_subparsers(dest="weights_command", required=True, metavar="{convert}")
    convert = weights_commands.add_parser(
        "convert", help="ImageNet VGG16 weights (torchvision or Caffe) -> our VGG16 state dict",
        **_fmt({"epilog": _WEIGHTS_EXAMPLES}))
    convert.add_argument("src", help="torchvision state dict (.pth) or Caffe .caffemodel: path or URI")
    convert.add_argument("dst", help="where to write our state dict (.pt): path or URI (s3://...)")
    convert.add_argument("--from", dest="source", required=True, choices=("torchvision", "caffe"),
                         help="format and input convention of SRC")
    convert.add_argument("--flavour", default="paper", choices=("paper", "tiny"),
                         help="our VGG16 flavour the weights are for (default %(default)s; ImageNet VGG16 is paper)")
    convert.add_argument("--drop-fc8", action="store_true", help="leave fc8 (the source's classifier) out of DST")
    convert.set_defaults(func=cmd_weights_convert)

    predict = commands.add_parser("predict", help="top-5 actions of your own videos with a finished job's networks",
                                  **_fmt({"epilog": _PREDICT_EXAMPLES}))
    predict.add_argument("videos", nargs="+", metavar="VIDEO", help="video files (anything PyAV decodes)")
    predict.add_argument("--model", required=True, metavar="JOB|RUN|URI",
                         help="job name, workspace, stage folder or MLflow run id (see below)")
    predict.add_argument("--fast", action="store_true", help="one centre window, centre crop (instead of the protocol)")
    predict.add_argument("--windows", type=int, metavar="N", help="windows per video (default: the evaluate stage's, else 25)")
    predict.add_argument("--crops", type=int, choices=(1, 5, 10), help="crops per window (default: the evaluate stage's, else 10)")
    predict.add_argument("--top", type=int, default=5, metavar="K", help="classes to print (default %(default)s)")
    predict.add_argument("--flow-video", metavar="OUT.mp4",
                         help="write each frame beside MotionNet's flow in Middlebury colours (several videos: OUT_<video>.mp4)")
    predict.add_argument("--int8", action="store_true",
                         help="CPU only: int8 convolutions and fc layers (torch's quantised kernels; AVX2 is enough), "
                              "calibrated on training videos of the model's dataset; about 2x the fp32 speed of "
                              "paper-size networks "
                              "(bench/speed.py measures it and its top-1 agreement with fp32)")
    predict.add_argument("--json", action="store_true", help="one JSON line per video instead of text")
    predict.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu, cuda, cuda:1, ...")
    predict.add_argument("--tracking-uri", help="MLflow store for a run id (default: $MLFLOW_TRACKING_URI, else .h2s/mlflow.db)")
    predict.set_defaults(func=cmd_predict)

    export = commands.add_parser("export", help="write a finished job's hidden two-stream model as a torch.export program",
                                 **_fmt({"epilog": _EXPORT_EXAMPLES}))
    export.add_argument("--model", required=True, metavar="JOB|RUN|URI",
                        help="as for predict: job name, workspace, evaluate stage folder or MLflow run id")
    export.add_argument("--out", required=True, metavar="DIR", help="folder for hidden_two_stream.pt2 and model.json")
    export.add_argument("--tracking-uri", help="MLflow store for a run id (default: $MLFLOW_TRACKING_URI, else .h2s/mlflow.db)")
    export.set_defaults(func=cmd_export)

    s3 = commands.add_parser("s3-serve", help="a local S3-compatible server over a folder", **_fmt({"epilog": _S3_EXAMPLES}))
    s3.add_argument("directory", help="folder whose sub-folders are the buckets")
    s3.add_argument("--port", type=int, default=9000)
    s3.add_argument("--bucket", default="h2s", help="bucket (sub-folder) to create if missing (default %(default)s)")
    s3.set_defaults(func=cmd_s3_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from h2s_dist.ray_auth import default_auth_mode

    default_auth_mode()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume (finished stages are reused)", file=sys.stderr)
        return 130
    except Exception as err:
        message, code = _user_error(err)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return code


def _user_error(err: Exception) -> tuple[str | None, int]:
    """(message, exit status) for an error the user can fix; (None, 0) for a bug, to raise.

    The error types are taken only from modules already loaded: importing the config and the
    runner costs seconds, and a command that never loaded them (`h2s runs`) cannot have
    raised their errors."""
    config = sys.modules.get("h2s_dist.config")
    runner = sys.modules.get("h2s_dist.pipeline.runner")
    if config is not None and isinstance(err, config.JobSpecError):
        return f"error: the job spec is not valid:\n{err}", 2
    if runner is not None and isinstance(err, runner.StageFailedError):
        return f"error: {err}", 1
    if isinstance(err, ValueError):
        return f"error: {err}", 2
    return None, 0


if __name__ == "__main__":
    raise SystemExit(main())
