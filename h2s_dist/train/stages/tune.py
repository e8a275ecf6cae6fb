"""Stage `tune`: a Ray Tune search over a training stage's loss weights and learning rates.

The stage embeds one trial spec (`pretrain_motionnet` or `finetune_stacked`) and a search
space of dotted paths into it (tune/*.yaml or inline). Each trial:
  - is that stage with the sampled values set, run in a Tune function: in the function's
    process (`trial.scaling.num_workers: 0`, TuneSession) or as a TorchTrainer started
    inside the function (Train V2 refuses a trainer handed to a Tuner);
  - logs into its own MLflow child run under the tune stage's run (tag mlflow.parentRunId);
  - reports its metrics to Tune at every log step (`step` is ASHA's time attribute), so
    ASHA stops poor trials early; a multi-worker trial too (its workers report at log steps,
    and TuneReportCallback passes each report on);
  - writes checkpoints, weights and outputs.json under `<output>/trials/<trial id>/`.

Outputs: `best_config`, `best_metric`, `best_trial`, the best trial's weights under their
usual names (`motionnet` / `stacked_temporal`: `${tune.motionnet}` feeds a later stage),
its `checkpoint`, and a summary of every trial. An interrupted search resumes:
`<output>/ray/tune` is restored with `Tuner.restore` (finished trials are kept, unfinished
ones continue from their checkpoints) instead of starting over.

A kill (SIGKILL, a lost driver) is not seen by Tune: what it restores is its last experiment
snapshot (taken every >= 10 s), which may be older than the trials' own files. So the
trial folder is the truth: a trial that Tune restores as unfinished but whose folder holds
outputs.json is not trained again, and a trial the restored searcher creates again (same
id, same config: the searcher's state and RNG are in the snapshot) continues from the
checkpoints in its folder. Its MLflow child run is the one it had, moved under the stage
run that completes the search (`h2s.previous_parent_run_id` keeps the old parent).
ASHA's rungs are restored too (`<output>/ray/asha_state.pkl`, h2s_dist.train.tune_asha), and
on local storage the snapshot is copied through an atomic filesystem
(h2s_dist.data.atomic_arrow_fs), so a kill in the middle of Tune's copy leaves the previous
snapshot readable instead of a truncated one.
"""

from __future__ import annotations

import json
import math
from typing import Any

from h2s_dist import tune_spaces
from h2s_dist.data import storage
from h2s_dist.specs.driver import TuneSpec

EXPERIMENT_NAME = "tune"
ASHA_STATE_FILE = "asha_state.pkl"  # beside the experiment: h2s_dist.train.tune_asha
RUN_ID_FILE = "mlflow_run_id"
CONFIG_FILE = "config.json"
# Outputs of a training stage that are not weights URIs.
_NOT_WEIGHTS = {"metrics", "steps", "resumed_from_step", "first_batch_checksums", "checkpoint", "best_checkpoint"}

# ----------------------------------------------------------------------------- one trial


def trial_uri(output_uri: str, trial_id: str) -> str:
    return storage.join(output_uri, "trials", trial_id)


def _trial_tracker(setup: dict, trial_id: str, folder: str, config: dict):
    """The trial's MLflow child run (the same one again when a restored trial continues)."""
    from h2s_dist.tracking import MlflowTracker, NullTracker

    uri, parent = setup["tracking"]["uri"], setup["tracking"]["run_id"]
    if not parent:
        return NullTracker()
    id_file = storage.join(folder, RUN_ID_FILE)
    if storage.exists(id_file):
        child = MlflowTracker(uri, storage.read_bytes(id_file).decode().strip())
        _adopt_run(child, parent)
        return child
    tracker = MlflowTracker(uri, parent)
    experiment_id = tracker.client.get_run(parent).info.experiment_id
    run = tracker.client.create_run(
        experiment_id,
        run_name=f"trial-{trial_id}",
        tags={
            "mlflow.parentRunId": parent, "h2s.run_type": "trial", "h2s.trial_id": trial_id,
            "h2s.stage_kind": setup["kind"], "h2s.tune_config": json.dumps(config, sort_keys=True),
        },
    )
    storage.write_bytes(id_file, run.info.run_id.encode())
    child = MlflowTracker(uri, run.info.run_id)
    child.log_params({f"tune.{path}": value for path, value in config.items()})
    return child


def _adopt_run(child, parent: str | None) -> None:
    """Put a trial's run under `parent`, the stage run now driving the search: after a
    resume the trial's run was created under the interrupted execution's stage run."""
    if not parent or not child.run_id:
        return
    previous = child.client.get_run(child.run_id).data.tags.get("mlflow.parentRunId")
    if previous != parent:
        child.set_tags({"mlflow.parentRunId": parent, "h2s.previous_parent_run_id": str(previous)})


def _claim_folder(folder: str, config: dict, setup: dict) -> None:
    """Make `folder` this trial's: record its config on first use. A folder holding another
    config was left by a sample the restored searcher no longer knows (a search without a
    seed draws new values after a restore, under the same trial id); its checkpoints would
    not load into this trial's spec, so it is cleared and its MLflow run closed KILLED."""
    from h2s_dist.tracking import MlflowTracker

    config_file = storage.join(folder, CONFIG_FILE)
    wanted = json.dumps(config, sort_keys=True)
    if storage.exists(config_file):
        if storage.read_bytes(config_file).decode() == wanted:
            return
        id_file = storage.join(folder, RUN_ID_FILE)
        if setup["tracking"]["run_id"] and storage.exists(id_file):
            stale = MlflowTracker(setup["tracking"]["uri"], storage.read_bytes(id_file).decode().strip())
            stale.set_tags({"h2s.superseded": "true"})
            stale.close("KILLED")
        for item in storage.list_uris(folder):
            storage.delete(item)
    storage.write_bytes(config_file, wanted.encode())


def _finished_outputs(folder: str) -> dict[str, Any] | None:
    uri = storage.join(folder, "outputs.json")
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def _final_report(outputs: dict[str, Any]) -> dict[str, float]:
    """The trial's last result for Tune, from its outputs (`step` = the steps it trained)."""
    metrics = outputs.get("metrics") or {}
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return {**clean, "step": int(outputs.get("steps") or 0)}


def tune_trial(config: dict, setup: dict) -> None:
    """The Tune function of every trial (importable, so Ray ships it by reference).

    The trial is its stage run by the launcher, like any stage: in this process with a
    TuneSession (metrics to Tune at every log step), or as a Ray Train run whose reports
    TuneReportCallback passes on (every log step too: report_log_steps)."""
    import torch
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from h2s_dist.registry import stage_kind
    from h2s_dist.train.launch import Tracking, build_local_session, launch
    from h2s_dist.train.tune_session import TuneSession

    torch.set_num_threads(max(1, int(setup["cpus_per_trial"])))
    trial_id = tune.get_context().get_trial_id()
    spec = stage_kind(setup["kind"]).spec.model_validate(tune_spaces.apply_config(setup["trial"], config))
    folder = trial_uri(setup["output_uri"], trial_id)
    _claim_folder(folder, config, setup)
    done = _finished_outputs(folder)
    if done is not None:
        # Finished before the search was interrupted, after Tune's last snapshot (which still
        # says RUNNING): training again would rewrite its weights and outputs for nothing.
        tune.report(_final_report(done))
        return
    tracker = _trial_tracker(setup, trial_id, folder, config)
    session = build_local_session(spec, folder, TuneSession, final_step=spec.loop.max_steps)
    try:
        tracking = Tracking(setup["tracking"]["uri"], tracker.run_id, stage=f"trial-{trial_id}")
        outputs = launch(setup["kind"], spec, folder, tracking,
                         run_name=f"trial-{trial_id}", local_session=session, callbacks=[TuneReportCallback()],
                         report_log_steps=True)
        if session.ran_here and session.last_reported_step != outputs["steps"]:
            # Restored from its final checkpoint (killed before writing its outputs): the
            # loop had nothing left to log, but Tune still needs the final result.
            session.report_metrics(_final_report(outputs), outputs["steps"])
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")
    session.flush()  # last: Tune may stop the trial inside this report (ASHA at max_t)


# ----------------------------------------------------------------------------- the search


def _tuner(spec: TuneSpec, space: tune_spaces.SearchSpaceFile, output_uri: str, tracker):
    """A restored Tuner when `<output>/ray/tune` holds an interrupted search, else a new one."""
    from ray import tune
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    from h2s_dist.train.tune_asha import PersistentASHA

    setup = {
        "kind": spec.trial.kind, "trial": spec.trial_data(), "output_uri": output_uri,
        "cpus_per_trial": spec.cpus_per_trial,
        "tracking": {"uri": getattr(tracker, "tracking_uri", None), "run_id": tracker.run_id},
    }
    resources = {"CPU": spec.cpus_per_trial, **({"GPU": spec.gpus_per_trial} if spec.gpus_per_trial else {})}
    trainable = tune.with_resources(tune.with_parameters(tune_trial, setup=setup), resources)
    ray_fs, ray_path = _snapshot_filesystem(storage.join(output_uri, "ray"))
    experiment_path = f"{ray_path.rstrip('/')}/{EXPERIMENT_NAME}"
    asha_state = storage.join(output_uri, "ray", ASHA_STATE_FILE)
    if tune.Tuner.can_restore(experiment_path, storage_filesystem=ray_fs):
        return tune.Tuner.restore(experiment_path, trainable, resume_errored=True, storage_filesystem=ray_fs), True
    if spec.asha is not None:
        PersistentASHA.forget(asha_state)  # a fresh search: no rungs of an earlier one
        scheduler = PersistentASHA(
            asha_state, time_attr="step", max_t=spec.trial.loop.max_steps,
            grace_period=spec.asha.grace_period_steps, reduction_factor=spec.asha.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    tuner = tune.Tuner(
        trainable,
        param_space=tune_spaces.to_param_space(space),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, scheduler=scheduler, num_samples=spec.num_samples,
            reuse_actors=True,  # a new actor per trial re-imports torch and mlflow (seconds each)
            search_alg=BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.max_concurrent_trials),
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT_NAME, storage_path=ray_path, storage_filesystem=ray_fs, verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures_per_trial),
        ),
    )
    return tuner, False


def _snapshot_filesystem(uri: str):
    """(pyarrow filesystem, path) Tune keeps its experiment under. Local folders go through
    atomic_arrow_fs: Tune copies its snapshot there file by file, and a driver killed mid-copy
    must leave the previous snapshot whole, not truncated (S3 objects are atomic already)."""
    from h2s_dist.data.atomic_arrow_fs import atomic_local_filesystem

    fs, path = storage.pyarrow_filesystem(uri)
    return (atomic_local_filesystem() if fs.type_name == "local" else fs), path


def trial_summaries(results, spec: TuneSpec, output_uri: str) -> list[dict[str, Any]]:
    """One row per trial: id, config, last metric, steps, whether it finished, its outputs."""
    rows = []
    for result in results:
        metrics = result.metrics or {}
        trial_id = str(metrics.get("trial_id") or result.path.rstrip("/").rsplit("/", 1)[-1])
        outputs = _finished_outputs(trial_uri(output_uri, trial_id))
        # A finished trial's own outputs hold its final metrics; Tune's last result may be an
        # older one (a trial that finished after the snapshot a resumed search started from).
        final = _final_report(outputs) if outputs is not None else {}
        value = final.get(spec.metric, metrics.get(spec.metric))
        rows.append({
            "trial_id": trial_id,
            "config": {k: v for k, v in (result.config or {}).items()},
            "metric": float(value) if isinstance(value, (int, float)) else None,
            "steps": int(final.get("step") or metrics.get("step") or 0),
            "finished": outputs is not None,
            "error": str(result.error) if result.error else None,
            "outputs": outputs,
        })
    return rows


def best_of(rows: list[dict[str, Any]], spec: TuneSpec) -> dict[str, Any]:
    """The finished trial with the best final metric (a stopped trial has no final weights)."""
    finished = [r for r in rows if r["finished"] and r["metric"] is not None and math.isfinite(r["metric"])]
    if not finished:
        seen = sorted({k for r in rows for k in (r["outputs"] or {}).get("metrics", {})})
        raise ValueError(
            f"no trial finished with metric {spec.metric!r} ({len(rows)} trials; errors: "
            f"{[r['error'] for r in rows if r['error']][:3]}; metrics the trials logged: {seen}); "
            "check `metric` or the trials' logs under <output>/ray/tune"
        )
    pick = min if spec.mode == "min" else max
    return pick(finished, key=lambda r: r["metric"])


def _settle_trial_runs(rows: list[dict[str, Any]], output_uri: str, tracker) -> list[str]:
    """Every trial's MLflow run under this stage run, closed. Trials ASHA stopped never
    closed theirs: marked KILLED, saying why. After a resume, the runs of trials finished
    before the interruption are moved here (a run killed between the trial's outputs and its
    close is closed FINISHED). Returns the stage runs the search was resumed from."""
    from h2s_dist.tracking import MlflowTracker

    if not tracker.run_id:
        return []
    previous: set[str] = set()
    for row in rows:
        id_file = storage.join(trial_uri(output_uri, row["trial_id"]), RUN_ID_FILE)
        if not storage.exists(id_file):
            continue
        child = MlflowTracker(tracker.tracking_uri, storage.read_bytes(id_file).decode().strip())
        run = child.client.get_run(child.run_id)
        parent = run.data.tags.get("mlflow.parentRunId") or ""
        # Already ours: moved here when it resumed in this execution (_trial_tracker), or never moved.
        previous.add(parent if parent != tracker.run_id else run.data.tags.get("h2s.previous_parent_run_id", ""))
        _adopt_run(child, tracker.run_id)
        if row["finished"]:
            if run.info.status == "RUNNING":
                child.close("FINISHED")
            continue
        child.set_tags({"h2s.stopped_early": "true", "h2s.stopped_at_step": str(row["steps"])})
        child.close("FAILED" if row["error"] else "KILLED")
    return sorted(previous - {"", tracker.run_id})


def run(spec: TuneSpec, tracker, output_uri: str) -> dict[str, Any]:
    import ray

    from h2s_dist.train.launch import ensure_ray

    space = spec.space()  # loud before Ray starts
    tracker.set_tags({"h2s.stage_kind": spec.kind, "h2s.trial_kind": spec.trial.kind})
    tracker.log_params({"metric": spec.metric, "mode": spec.mode, "num_samples": spec.num_samples,
                        "search_space": space.model_dump(mode="json", exclude_none=True)["space"]})
    started_ray = not ray.is_initialized()
    ensure_ray()
    try:
        tuner, restored = _tuner(spec, space, output_uri, tracker)
        if restored:
            tracker.set_tags({"h2s.tune_restored": "true"})
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    rows = trial_summaries(results, spec, output_uri)
    resumed_from = _settle_trial_runs(rows, output_uri, tracker)
    if resumed_from:
        tracker.set_tags({"h2s.tune_resumed_from_run_ids": ",".join(resumed_from)})
    best = best_of(rows, spec)
    stopped = sum(1 for r in rows if not r["finished"] and not r["error"])
    metrics = {f"best/{spec.metric}": best["metric"], "tune/trials": float(len(rows)), "tune/stopped_early": float(stopped)}
    tracker.log_metrics(metrics, step=0)
    tracker.log_dict({"rows": [{k: v for k, v in r.items() if k != "outputs"} for r in rows]}, "tune/trials.json")
    outputs: dict[str, Any] = {
        "metrics": metrics,
        "metric": spec.metric,
        "best_metric": best["metric"],
        "best_config": best["config"],
        "best_trial": best["trial_id"],
        "restored": restored,
        "trials": {r["trial_id"]: {"config": r["config"], "metric": r["metric"], "steps": r["steps"],
                                   "finished": r["finished"]} for r in rows},
        "checkpoint": best["outputs"].get("checkpoint"),
    }
    outputs.update({k: v for k, v in best["outputs"].items() if k not in _NOT_WEIGHTS})
    return outputs
