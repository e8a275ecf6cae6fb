"""Run a job: its stages in dependency order, each once per spec, tracked in MLflow.

    result = run_job(load_job("jobs/quickstart.yaml"))

Tracking: one MLflow parent run per execution of a job (tags `h2s.job`, `h2s.spec_hash`,
`h2s.code_version`) and one child run per stage (`mlflow.parentRunId` plus the lineage tags
`h2s.stage`, `h2s.stage_kind`, `h2s.spec_hash`, `h2s.inputs`, `h2s.output`, `h2s.code_version`).
The runner creates the child run and the stage logs into it (launch(..., tracking=...)).

Cache: stage `S` writes to `<workspace>/<S>-<spec hash>`, where the hash is taken over the
stage's spec with its references resolved (so it covers its input URIs, and through them
everything upstream) and without `scaling` (a resume may use other workers). When that
folder holds `outputs.json` and a `_SUCCESS` record with the same hash, the stage is
reused, not rerun: it still gets a child run in this execution, FINISHED and tagged
`h2s.reused=true` and `h2s.reused_from_run_id=<the run that computed it>`, with the
outputs' final metrics copied, so every parent run shows the whole job. `fresh=True`
deletes a stage's folder first. A stage that crashed left its checkpoints in its folder;
the same command later reuses the finished stages and the launcher resumes the
interrupted one from `<output>/checkpoints`. Every stage folder also holds `spec.json`, the
resolved spec it ran (or was reused) under.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from h2s_dist import config as cfg
from h2s_dist.pipeline.report import results_table
from h2s_dist.ray_auth import default_auth_mode

SUCCESS_FILE = "_SUCCESS"
OUTPUTS_FILE = "outputs.json"
# The stage's resolved spec, so that a folder says what it holds without MLflow (h2s predict
# reads the networks' architecture from it); written at every start, reused stages included.
SPEC_FILE = "spec.json"
# Written when a stage starts, removed when it ends: still there at the next start means the
# execution that wrote it died without closing its MLflow runs (SIGKILL, a lost machine).
RUNNING_FILE = "_RUNNING"


class StageFailedError(RuntimeError):
    """A stage raised; the message names the stage and where its partial output lives."""


@dataclass
class StageResult:
    name: str
    kind: str
    output_uri: str
    spec_hash: str
    run_id: str
    reused: bool
    seconds: float
    outputs: dict[str, Any]


@dataclass
class JobResult:
    job: str
    run_id: str
    tracking_uri: str
    experiment: str
    seconds: float
    stages: dict[str, StageResult] = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`git describe --always --dirty` of the checkout this package runs from, else the
    package version (an installed wheel has no git)."""
    from h2s_dist import __version__

    here = pathlib.Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=here, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return f"h2s-dist {__version__}"
    described = done.stdout.strip()
    return described if done.returncode == 0 and described else f"h2s-dist {__version__}"


def workspace_uri(job: BaseModel) -> str:
    """The job's workspace; a relative local path is made absolute (Ray workers run elsewhere)."""
    workspace = job.workspace
    if "://" in workspace:
        return workspace.rstrip("/")
    return str(pathlib.Path(workspace).resolve())


def _model_name(job: BaseModel, workspace: str) -> str:
    """What `h2s predict --model` needs to find this job's models: its name for the default
    workspace (resolved from the current folder), else the workspace itself."""
    return job.name if job.workspace == f"{cfg.JOBS_ROOT}/{job.name}" else workspace


def stage_output_uri(workspace: str, stage_name: str, spec_hash: str) -> str:
    from h2s_dist.data import storage

    return storage.join(workspace, f"{stage_name}-{spec_hash}")


def read_success(output_uri: str) -> dict[str, Any] | None:
    """The `_SUCCESS` record of a finished stage folder, or None."""
    from h2s_dist.data import storage

    uri = storage.join(output_uri, SUCCESS_FILE)
    if not storage.exists(uri) or not storage.exists(storage.join(output_uri, OUTPUTS_FILE)):
        return None
    return json.loads(storage.read_bytes(uri))


def delete_tree(uri: str) -> None:
    from h2s_dist.data import storage

    for item in storage.list_uris(uri):
        storage.delete(item)


def launch_stage(kind: str, spec: BaseModel, output_uri: str, tracking, ray_address: str | None) -> dict[str, Any]:
    from h2s_dist.train import launch as launcher

    return launcher.launch(kind, spec, output_uri, tracking=tracking, ray_address=ray_address)


def _needed(job: BaseModel, only: Sequence[str]) -> set[str]:
    """The stages in `only` and everything they need, transitively."""
    names = {e.name for e in job.stages}
    unknown = [n for n in only if n not in names]
    if unknown:
        raise ValueError(f"--only {', '.join(unknown)}: no such stage; stages are: {', '.join(sorted(names))}")
    needs = {e.name: e.needs for e in job.stages}
    todo, seen = list(only), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(needs[name])
    return seen


def _numeric_metrics(outputs: Mapping[str, Any]) -> dict[str, float]:
    metrics = outputs.get("metrics")
    if not isinstance(metrics, Mapping):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class _Run:
    """One execution of a job: the parent run, the outputs so far, the progress lines."""

    def __init__(self, job: BaseModel, fresh: bool, only: Sequence[str] | None, ray_address: str | None, echo):
        from h2s_dist.tracking import resolve_tracking_uri
        from h2s_dist.train.checkpoint import spec_hash

        self.job = job
        self.fresh = fresh
        self.selected = set(only) if only else None
        self.needed = _needed(job, only) if only else {e.name for e in job.stages}
        self.ray_address = ray_address or job.ray_address
        self.echo = echo
        self.tracking_uri = resolve_tracking_uri(job.tracking_uri)
        self.workspace = workspace_uri(job)
        self.job_hash = spec_hash(job.model_dump(mode="json"))
        self.version = code_version()
        self.outputs: dict[str, dict[str, Any]] = {}
        self.result: JobResult | None = None

    def start_parent(self):
        from h2s_dist.tracking import MlflowTracker

        tags = {
            "h2s.run_type": "job", "h2s.job": self.job.name, "h2s.spec_hash": self.job_hash,
            "h2s.code_version": self.version, "h2s.workspace": self.workspace,
        }
        if self.selected:
            tags["h2s.only"] = ",".join(sorted(self.selected))
        parent = MlflowTracker.start(self.tracking_uri, self.job.experiment, run_name=self.job.name, tags=tags)
        parent.log_params({"job.name": self.job.name, "job.spec_hash": self.job_hash, "job.fresh": self.fresh})
        parent.log_dict(self.job.model_dump(mode="json"), "job.json")
        self.result = JobResult(self.job.name, parent.run_id, self.tracking_uri, self.job.experiment, 0.0)
        return parent

    def prepare(self, index: int, entry: BaseModel) -> tuple[BaseModel, str, str, list[str]]:
        """(resolved stage spec, spec hash, output URI, input URIs) of one entry."""
        from h2s_dist.train.launch import hash_of

        data = entry.model_dump(mode="json", exclude=set(cfg.ENTRY_FIELDS))
        resolved = cfg.resolve_references(data, self.outputs, where=f"stages[{index}]")
        try:
            spec = cfg.stage_spec_of(entry, resolved)
        except Exception as err:  # a resolved value of the wrong type, e.g.
            raise cfg.JobSpecError([(f"stages[{index}]", f"after resolving references: {err}")]) from err
        inputs = sorted({
            str(cfg.resolve_references(text, self.outputs))
            for _, text in cfg.iter_strings(data) if cfg.references(text)
        })
        spec_hash = hash_of(spec)
        return spec, spec_hash, stage_output_uri(self.workspace, entry.name, spec_hash), inputs

    def child_tags(self, entry, spec_hash: str, output_uri: str, inputs: list[str]) -> dict[str, str]:
        return {
            "h2s.run_type": "stage", "h2s.job": self.job.name, "h2s.stage": entry.name, "h2s.stage_kind": entry.kind,
            "h2s.spec_hash": spec_hash, "h2s.inputs": json.dumps(inputs), "h2s.output": output_uri,
            "h2s.code_version": self.version,
        }


def run_job(
    job: BaseModel,
    *,
    fresh: bool = False,
    only: Sequence[str] | None = None,
    ray_address: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> JobResult:
    """Run (or reuse) every stage of `job` in dependency order; see the module doc.

    only: run just these stages; the stages they need must have finished before (they are
    reused) and stages after them are left alone. fresh: rerun the stages that would run,
    deleting their old output folders. ray_address: overrides the job's `ray_address`.
    Raises JobSpecError before anything runs when the job may span nodes and writes where
    only this node sees (pipeline.layout); StageFailedError (after marking the child and
    parent runs FAILED).
    """
    from h2s_dist.pipeline.layout import check_layout

    echo = echo or functools.partial(print, flush=True)
    check_layout(job, ray_address=ray_address or job.ray_address)  # before any work: the job's writes are seen by every node
    run = _Run(job, fresh, only, ray_address, echo)
    started = time.perf_counter()
    parent = run.start_parent()
    echo(f"[h2s] job {job.name}: MLflow run {parent.run_id} (experiment {job.experiment!r}), workspace {run.workspace}")
    status = "FAILED"
    try:
        index_of = {e.name: i for i, e in enumerate(job.stages)}
        for entry in cfg.topological_order(job.stages):
            if entry.name in run.needed:
                run.result.stages[entry.name] = _one_stage(run, index_of[entry.name], entry, parent.run_id)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        run.result.seconds = time.perf_counter() - started
        parent.log_metrics({"job/seconds": run.result.seconds}, step=0)
        parent.close(status)
    echo(f"[h2s] job {job.name} finished in {run.result.seconds:.1f}s")
    for stage in run.result.stages.values():
        if stage.kind == "evaluate" and (table := results_table(stage.outputs.get("metrics", {}), f"[h2s] {stage.name}")):
            echo(table)
    echo(f"[h2s] results: MLflow run {parent.run_id} in experiment {job.experiment!r} at {run.tracking_uri}")
    echo("[h2s] look further:\n"
         f"  h2s runs --tracking-uri {run.tracking_uri}                  every stage's state and key metrics\n"
         f"  h2s ui --tracking-uri {run.tracking_uri}                    curves, flow pictures, confusion matrices\n"
         f"  h2s predict VIDEO... --model {_model_name(job, run.workspace)}   top-5 classes of your own videos")
    return run.result


def _one_stage(run: _Run, index: int, entry: BaseModel, parent_run_id: str) -> StageResult:
    from h2s_dist.data import storage
    from h2s_dist.tracking import MlflowTracker
    from h2s_dist.train.launch import Tracking

    spec, spec_hash, output_uri, inputs = run.prepare(index, entry)
    may_run = run.selected is None or entry.name in run.selected
    if run.fresh and may_run:
        delete_tree(output_uri)
    record = read_success(output_uri)
    finished = record is not None and record.get("spec_hash") == spec_hash
    if not finished and not may_run:
        raise StageFailedError(
            f"stage {entry.name!r} is needed by --only {', '.join(sorted(run.selected))} but has not finished "
            f"with this spec (nothing complete at {output_uri}); run it first (without --only, or --only {entry.name})"
        )
    storage.write_bytes(storage.join(output_uri, SPEC_FILE), json.dumps(spec.model_dump(mode="json"), indent=2).encode())
    tags = run.child_tags(entry, spec_hash, output_uri, inputs)
    label = f"stage {entry.name} ({entry.kind})"
    if finished:
        tags.update({"h2s.reused": "true", "h2s.reused_from_run_id": str(record.get("run_id", ""))})
        child = MlflowTracker.start(run.tracking_uri, run.job.experiment, run_name=entry.name, parent_run_id=parent_run_id, tags=tags)
        outputs = json.loads(storage.read_bytes(storage.join(output_uri, OUTPUTS_FILE)))
        child.log_metrics(_numeric_metrics(outputs), step=int(outputs.get("steps") or 0))
        child.log_dict(outputs, "outputs.json")
        child.close("FINISHED")
        run.outputs[entry.name] = outputs
        run.echo(f"[h2s] {label}: reused {output_uri} (computed by run {record.get('run_id')})")
        return StageResult(entry.name, entry.kind, output_uri, spec_hash, child.run_id, True, 0.0, outputs)

    tags["h2s.reused"] = "false"
    interrupted = close_interrupted_runs(run.tracking_uri, output_uri)
    if interrupted:
        tags["h2s.resumes_run_id"] = interrupted
    child = MlflowTracker.start(run.tracking_uri, run.job.experiment, run_name=entry.name, parent_run_id=parent_run_id, tags=tags)
    marker = storage.join(output_uri, RUNNING_FILE)
    storage.write_bytes(marker, json.dumps({"run_id": child.run_id, "parent_run_id": parent_run_id}).encode())
    run.echo(f"[h2s] {label}: started -> {output_uri}" + (f" (resuming killed run {interrupted})" if interrupted else ""))
    started = time.perf_counter()
    try:
        tracking = Tracking(run.tracking_uri, child.run_id, stage=entry.name)
        outputs = launch_stage(entry.kind, spec, output_uri, tracking, run.ray_address)
    except KeyboardInterrupt:
        child.close("KILLED")
        storage.delete(marker, missing_ok=True)
        raise
    except Exception as err:
        child.close("FAILED")
        storage.delete(marker, missing_ok=True)
        run.echo(f"[h2s] {label}: FAILED after {time.perf_counter() - started:.1f}s: {type(err).__name__}: {err}")
        raise StageFailedError(
            f"stage {entry.name!r} ({entry.kind}) failed: {type(err).__name__}: {err}\n"
            f"  its partial output and checkpoints are in {output_uri}; MLflow run {child.run_id}.\n"
            "  Fix the cause and rerun the same command: finished stages are reused and this one resumes "
            "from its last checkpoint (add --fresh to start it over)."
        ) from err
    seconds = time.perf_counter() - started
    child.log_dict(outputs, "outputs.json")
    child.log_metrics({"stage/seconds": seconds}, step=0)
    child.close("FINISHED")
    success = {
        "stage": entry.name, "kind": entry.kind, "spec_hash": spec_hash, "run_id": child.run_id,
        "parent_run_id": parent_run_id, "job": run.job.name, "code_version": run.version, "inputs": inputs,
        "seconds": round(seconds, 3), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    storage.write_bytes(storage.join(output_uri, SUCCESS_FILE), json.dumps(success, indent=2).encode())
    storage.delete(marker, missing_ok=True)
    run.outputs[entry.name] = outputs
    run.echo(f"[h2s] {label}: finished in {seconds:.1f}s")
    return StageResult(entry.name, entry.kind, output_uri, spec_hash, child.run_id, False, seconds, outputs)


def close_interrupted_runs(tracking_uri: str, output_uri: str) -> str | None:
    """Close, as KILLED, the MLflow runs of an execution that died inside this stage.

    A killed process closes nothing, so its stage run and its job run would show RUNNING
    for good. The stage's RUNNING_FILE names them; those still RUNNING are closed with the
    tag h2s.killed_detected_at. Returns the dead stage run's id (None when there was none)."""
    from mlflow.exceptions import MlflowException

    from h2s_dist.data import storage
    from h2s_dist.tracking import MlflowTracker

    marker = storage.join(output_uri, RUNNING_FILE)
    if not storage.exists(marker):
        return None
    record = json.loads(storage.read_bytes(marker))
    for run_id in (record.get("run_id"), record.get("parent_run_id")):
        if not run_id:
            continue
        tracker = MlflowTracker(tracking_uri, run_id)
        try:
            status = tracker.client.get_run(run_id).info.status
        except MlflowException:  # another tracking store, or the run was deleted: nothing to close
            continue
        if status == "RUNNING":
            tracker.set_tags({"h2s.killed_detected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
            tracker.close("KILLED")
    storage.delete(marker, missing_ok=True)
    return record.get("run_id")


def default_env() -> None:
    """Local-run defaults: Ray token auth only when a token is given, no usage stats."""
    default_auth_mode()  # token when a token is given, else disabled (embedded Ray)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
