"""`h2s run` killed (SIGKILL, driver and Ray together) in the middle of a `tune` stage, then
run again: the search is restored, not started over.

The job is an ingest of a few synthetic videos and a search of 3 trials, one at a time. The
run is killed once the first trial has finished and the second has written a checkpoint;
the rerun must:
  - restore the Tune experiment (the stage's outputs say `restored`, its run is tagged);
  - leave the finished trial alone (its outputs.json and weights are the same files, untouched);
  - continue the interrupted trial from its checkpoint, in the same MLflow child run;
  - run num_samples trials in all (not the killed ones plus a fresh 3), and pick a best_config.

One test on purpose: two `h2s run` processes, each starting its own Ray (~10-20 s on 2 cores).
Nothing of the killed run may be left running: every process it started carries a marker in
its environment, and the test looks for it in /proc after the kill.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest
import yaml

pytestmark = pytest.mark.integration

NUM_SAMPLES = 3
MAX_STEPS = 60
CHECKPOINT_EVERY = 10
MARKER = "H2S_TUNE_RESUME_TEST"
RUN_ID = "mlflow_run_id"  # a trial folder's MLflow child run id


def job_spec(workspace: pathlib.Path, tracking_uri: str) -> dict:
    return {
        "name": "tune_resume",
        "workspace": str(workspace),
        "tracking_uri": tracking_uri,
        "stages": [
            {"name": "data", "kind": "ingest", "source": "synthetic", "num_tasks": 0,
             "synthetic": {"num_videos": 18, "num_frames": 12, "height": 48, "width": 64}},
            {"name": "tune", "kind": "tune", "needs": ["data"],
             "trial": {
                 "kind": "pretrain_motionnet", "motionnet": {"flavour": "tiny"},
                 "data": {"dataset": "${data.dataset}", "split": 1, "subset": "train", "clip_len_frames": 11,
                          "crop_size": 32, "batch_size": 2, "loader_workers": 0, "shuffle_buffer": 4,
                          "epoch_length_samples": 16},
                 "optim": {"name": "adam", "weight_decay": 0.0},
                 # Long enough (seconds per trial) that the kill lands between a trial's first
                 # checkpoint and its end; the first trial also pays the actor's imports.
                 "loop": {"max_steps": MAX_STEPS, "log_every_steps": 5, "picture_every_steps": 1000,
                          "checkpoint_every_steps": CHECKPOINT_EVERY},
             },
             "search_space": {"optim.lr": {"loguniform": [1e-4, 3e-3]}},
             "asha": None,  # every trial runs its whole budget: the counts below are exact
             "num_samples": NUM_SAMPLES,
             "max_concurrent_trials": 1,
             "seed": 0},
        ],
    }


def _marked_processes(marker: str) -> dict[int, str]:
    """{pid: command line} of live (not zombie) processes with `marker` in their environment."""
    found = {}
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            state = next((line for line in (proc / "status").read_text().splitlines() if line.startswith("State:")), "")
            if "Z" in state.split()[1:2] or marker.encode() not in (proc / "environ").read_bytes():
                continue
            found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except (OSError, IndexError):
            continue  # gone while we looked, or not ours to read
    return found


def _trial_folders(workspace: pathlib.Path) -> dict[str, pathlib.Path]:
    return {p.name: p for p in sorted(workspace.glob("tune-*/trials/*")) if p.is_dir()}


def _mid_search(workspace: pathlib.Path) -> tuple[list[str], list[str]] | None:
    """(finished trial ids, interrupted-to-be trial ids) once >= 1 trial has finished and
    another has written a checkpoint but not its outputs; else None."""
    folders = _trial_folders(workspace)
    finished = [t for t, f in folders.items() if (f / "outputs.json").is_file()]
    running = [t for t, f in folders.items()
               if not (f / "outputs.json").is_file() and any(f.glob("checkpoints/step_*/state.pt"))]
    return (finished, running) if finished and running else None


def _start(command: list[str], env: dict, log: pathlib.Path) -> subprocess.Popen:
    # Its own session: the driver leads a process group, which the Ray processes it starts join.
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _file_ids(path: pathlib.Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@pytest.fixture
def ray_tmp():
    """A short Ray temp dir of the test's own (Unix socket paths are limited to ~107 bytes)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="h2s-rt-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_killed_tune_stage_resumes_its_search(tmp_path, ray_tmp):
    from mlflow.tracking import MlflowClient

    workspace = tmp_path / "ws"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(job_spec(workspace, tracking_uri), sort_keys=False))
    # A marker in the environment, inherited by every process these runs start.
    marker = f"{MARKER}={secrets.token_hex(4)}"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "OMP_NUM_THREADS": "1", MARKER: marker.split("=", 1)[1]}
    env.pop("RAY_ADDRESS", None)  # its own local Ray, never a cluster the outer shell points at
    command = [sys.executable, "-m", "h2s_dist", "run", str(spec_path)]
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"

    first = _start(command, env, first_log)
    try:
        # 1. Wait (bounded) until the search is mid-way, then kill the whole process group.
        started = time.monotonic()
        deadline = started + 240
        seen = None
        while seen is None and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
            seen = _mid_search(workspace)
        assert seen is not None, (
            f"the run {'ended (rc %s)' % first.returncode if first.poll() is not None else 'timed out'} before a trial "
            f"finished and another checkpointed; trials: {sorted(_trial_folders(workspace))}\n"
            + first_log.read_text()[-3000:])
        alive_before = _marked_processes(marker)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        kill_s = time.monotonic() - started
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)

    # 2. Nothing of the killed run survives it (its process group; Ray's workers also die with
    # their raylet).
    assert len(alive_before) > 2, f"expected the driver and its Ray processes, found {alive_before}"
    left = _marked_processes(marker)
    wait_until = time.monotonic() + 15
    while left and time.monotonic() < wait_until:
        time.sleep(0.2)
        left = _marked_processes(marker)
    for pid in left:  # clean up what we started before failing
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    assert not left, f"processes of the killed run still alive: {left}"

    # What the kill left (looked at again: a trial may have moved on since the poll).
    seen = _mid_search(workspace)
    assert seen is not None, f"the kill landed after the search's middle: {sorted(_trial_folders(workspace))}"
    finished_before, interrupted = seen
    folders = _trial_folders(workspace)
    done = {t: folders[t] for t in finished_before}
    before = {t: {name: _file_ids(f / name) for name in ("outputs.json", "weights/motionnet.pt", RUN_ID)}
              for t, f in done.items()}
    outputs_before = {t: json.loads((f / "outputs.json").read_text()) for t, f in done.items()}
    run_ids_before = {t: (f / RUN_ID).read_text().strip() for t, f in folders.items() if (f / RUN_ID).is_file()}
    ckpt_before = {t: sorted(p.parent.name for p in folders[t].glob("checkpoints/step_*/state.pt"))
                   for t in interrupted}
    stage_dirs = list(workspace.glob("tune-*"))
    assert len(stage_dirs) == 1 and not (stage_dirs[0] / "_SUCCESS").exists()
    stage_dir = stage_dirs[0]

    # 3. The same command again.
    started = time.monotonic()
    second = _start(command, env, second_log)
    try:
        rc = second.wait(timeout=300)
    finally:
        if second.poll() is None:
            os.killpg(second.pid, signal.SIGKILL)
            second.wait(timeout=30)
    rerun_s = time.monotonic() - started
    log = second_log.read_text()
    assert rc == 0, log[-4000:]
    assert "stage data (ingest): reused" in log

    outputs = json.loads((stage_dir / "outputs.json").read_text())
    assert (stage_dir / "_SUCCESS").is_file()
    assert outputs["restored"] is True
    # num_samples trials in all, each finished once; the pre-kill trials are among them.
    assert len(outputs["trials"]) == NUM_SAMPLES, outputs["trials"]
    assert set(finished_before) | set(interrupted) <= set(outputs["trials"])
    assert sorted(_trial_folders(workspace)) == sorted(outputs["trials"])
    assert all(t["finished"] and t["steps"] == MAX_STEPS for t in outputs["trials"].values())
    assert outputs["best_trial"] in outputs["trials"] and set(outputs["best_config"]) == {"optim.lr"}
    assert outputs["best_metric"] == min(t["metric"] for t in outputs["trials"].values())

    # The finished trials were not run again: the same files, never rewritten.
    for t, f in done.items():
        assert {name: _file_ids(f / name) for name in before[t]} == before[t], f"trial {t} was rerun"
        assert outputs["trials"][t]["metric"] == pytest.approx(outputs_before[t]["metrics"]["loss/total"])
    # The interrupted trial continued from its last checkpoint, not from step 0.
    for t in interrupted:
        trial_outputs = json.loads((folders[t] / "outputs.json").read_text())
        assert trial_outputs["resumed_from_step"] == int(ckpt_before[t][-1].rsplit("_", 1)[1]), (t, ckpt_before[t])
        assert trial_outputs["steps"] == MAX_STEPS

    # MLflow: one child run per trial (the interrupted one kept its run), all under the stage
    # run that completed the search, all FINISHED.
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tune_resume")
    stage_runs = client.search_runs([experiment.experiment_id], "tags.`h2s.stage` = 'tune'")
    assert len(stage_runs) == 2  # the killed execution's and the rerun's
    completed = next(r for r in stage_runs if r.info.status == "FINISHED")
    killed = next(r for r in stage_runs if r.info.run_id != completed.info.run_id)
    assert completed.data.tags.get("h2s.tune_restored") == "true"
    assert completed.data.tags.get("h2s.tune_resumed_from_run_ids") == killed.info.run_id
    # The killed execution closed nothing; the rerun closed its stage and job runs as KILLED.
    assert killed.info.status == "KILLED" and completed.data.tags["h2s.resumes_run_id"] == killed.info.run_id
    assert client.get_run(killed.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    trials = client.search_runs([experiment.experiment_id], "tags.`h2s.run_type` = 'trial'")
    assert sorted(r.data.tags["h2s.trial_id"] for r in trials) == sorted(outputs["trials"])
    for r in trials:
        trial_id = r.data.tags["h2s.trial_id"]
        assert r.info.status == "FINISHED", (trial_id, r.info.status)
        assert r.data.tags["mlflow.parentRunId"] == completed.info.run_id, trial_id
        if trial_id in run_ids_before:  # started before the kill: the same run, moved under the rerun's
            assert r.info.run_id == run_ids_before[trial_id]
            assert r.data.tags["h2s.previous_parent_run_id"] == killed.info.run_id
    print(f"\ntune resume: killed after {kill_s:.1f}s with {finished_before} finished and {interrupted} at "
          f"{ckpt_before}; rerun {rerun_s:.1f}s, best {outputs['best_trial']} {outputs['best_config']}")

