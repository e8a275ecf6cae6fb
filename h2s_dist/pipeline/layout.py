"""Where a job writes must be seen by every node that writes or reads it.

On a Ray cluster of more than one node, stage outputs, checkpoints, flow caches and pictures
(all under the job's `workspace`) and the MLflow store (`tracking_uri`) are written by
processes on other nodes than the driver's and read back by the driver and by later stages.
A local path, a `file://` URI or a `sqlite:///` store lives on one node only: Ray Train
refuses a storage path local to the head, rank 0 logs into a sqlite file nobody reads, and
a job submitted through the Ray Jobs API writes into Ray's temporary copy of the working
directory, deleted with its session. So, before any work:

    check_layout(job, ray_address=address)              # pipeline.runner, before the first stage
    check_layout(job, submitted_to=args.address)        # h2s submit, before submitting
    # JobSpecError: "workspace: .h2s/jobs/q is a path on this node only, but the job is
    #                submitted to the Ray cluster at http://head:8265 (h2s submit); ..."

The rule (`stranded`, the one decision every check here goes through): when the job may
span nodes (`multi_node_reason`: submitted with `h2s submit`, run against a Ray cluster
reached by address -- `--address`, `ray_address`, $RAY_ADDRESS, which Ray sets in every
submitted job -- or connected to a cluster of more than one node), `workspace` must be an
object store URI (`s3://...`) and `tracking_uri` an MLflow tracking server (`http(s)://...`),
unless `workspace_shared: true` declares that the job's local paths (the workspace, a
`sqlite:///` or `file://` store) are on a filesystem every node mounts at the same path (NFS,
Lustre, or a cluster of one machine).
A job on an embedded local Ray, or on no Ray, is one node: anything goes. The same rule holds
for a dataset an ingest writes outside the workspace (an ingest stage's `output`, checked
with the job) and for `h2s ingest --output` (`check_output`, before any work):

    check_output(args.output, ray_address=args.address, shared=args.output_shared,
                 field="--output", fix=...)                 # h2s ingest, with Ray tasks
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
from collections.abc import Sequence

from pydantic import BaseModel

# URI schemes whose data sits on the disk of the node that writes it.
NODE_LOCAL_SCHEMES = ("", "file", "sqlite")
_FIX_WORKSPACE = (
    "use an object store every node reaches (workspace: s3://bucket/runs/<job>), or, if that path is on a "
    "filesystem every node mounts at the same place (NFS), say so with workspace_shared: true"
)
_FIX_STAGE_OUTPUT = (
    "use an object store every node reaches (output: s3://bucket/datasets/<name>), or, if that path is on a "
    "filesystem every node mounts at the same place (NFS), say so with workspace_shared: true"
)
_FIX_TRACKING = (
    "use an MLflow tracking server every node reaches (tracking_uri: http://mlflow-host:5000; "
    "`h2s tracking-server` starts one), or, if that store is on a filesystem every node mounts at the "
    "same place, set workspace_shared: true"
)


def scheme(uri: str) -> str:
    """"s3" for s3://b/k, "sqlite" for sqlite:///x.db, "" for a plain path."""
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_node_local(uri: str) -> bool:
    """Whether `uri` names data on the disk of the node that uses it (path, file://, sqlite://)."""
    return scheme(uri) in NODE_LOCAL_SCHEMES


def effective_tracking_uri(tracking_uri: str | None) -> str:
    """The MLflow store a job logs to: its `tracking_uri`, else $MLFLOW_TRACKING_URI, else
    the default local sqlite store (as tracking.resolve_tracking_uri, without creating it)."""
    from h2s_dist.tracking import DEFAULT_TRACKING_URI

    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def multi_node_reason(
    ray_address: str | None, num_nodes: int, submitted_to: str | None = None, what: str = "the job"
) -> str | None:
    """Why `what`'s processes may run on more than one node, or None when they cannot."""
    if submitted_to:
        return f"{what} is submitted to the Ray cluster at {submitted_to} (h2s submit)"
    if ray_address and ray_address != "local":  # "local" starts a new single-node Ray
        return f"{what} runs on the Ray cluster at {ray_address}"
    if num_nodes > 1:
        return f"the Ray cluster this process is connected to has {num_nodes} nodes"
    return None


def stranded(uri: str, reason: str | None, *, shared: bool) -> bool:
    """The rule: whether `uri`, written or read by processes on several nodes, would be seen by
    one node only. reason: multi_node_reason(...) (None: one node, nothing is stranded);
    shared: the user declared local paths to be on a filesystem every node mounts alike."""
    return reason is not None and not shared and is_node_local(uri)


def layout_problems(
    workspace: str, tracking_uri: str, *, workspace_shared: bool, reason: str | None, tracking_origin: str = "",
    outputs: Sequence[tuple[str, str]] = (),
) -> list[tuple[str, str]]:
    """(spec field, message) for each place the job writes that another node cannot see.

    reason: multi_node_reason(...); None (one node) allows everything. tracking_origin: where
    the store came from when the spec does not set it ("unset, so the default: "), for the message.
    outputs: (spec field, URI) of datasets stages write outside the workspace (an ingest's `output`)."""
    places = [("workspace", workspace, f"{workspace} is a path", _FIX_WORKSPACE),
              ("tracking_uri", tracking_uri, f"{tracking_origin}{tracking_uri} is a store", _FIX_TRACKING),
              *((name, uri, f"{uri} is a path", _FIX_STAGE_OUTPUT) for name, uri in outputs)]
    return [(name, f"{what} on this node only, but {reason}; {fix}")
            for name, uri, what, fix in places if stranded(uri, reason, shared=workspace_shared)]


def connected_num_nodes() -> int:
    """Alive nodes of the Ray cluster this process is connected to; 1 when not connected (the
    runner then starts an embedded single-node Ray). Never imports or starts Ray itself."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def _tracking_origin(job: BaseModel) -> str:
    if job.tracking_uri:
        return ""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "unset, so $MLFLOW_TRACKING_URI: "
    return "unset, so the default: "


def current_reason(
    ray_address: str | None = None, submitted_to: str | None = None, what: str = "the job"
) -> str | None:
    """multi_node_reason of a run from this process: `ray_address` (None: $RAY_ADDRESS, else an
    embedded Ray), the cluster it is connected to already, or an `h2s submit` address."""
    address = ray_address or os.environ.get("RAY_ADDRESS")
    return multi_node_reason(address, connected_num_nodes(), submitted_to, what)


def stage_outputs(job: BaseModel) -> list[tuple[str, str]]:
    """(spec field, URI) of each place a stage writes outside the workspace: an ingest's `output`."""
    # A reference (${...}) names another stage's output, already under the workspace.
    return [(f"stages[{i}].output", entry.output) for i, entry in enumerate(job.stages)
            if entry.kind == "ingest" and entry.output and "${" not in entry.output]


def check_layout(
    job: BaseModel, *, ray_address: str | None = None, submitted_to: str | None = None, source: str | None = None
) -> None:
    """Raise JobSpecError (naming `workspace` / `tracking_uri` / an ingest's `output` and the fix)
    when the job may span nodes and writes somewhere only this node sees. ray_address: what the
    run connects to (None: $RAY_ADDRESS, else an embedded Ray); submitted_to: the `h2s submit`
    address; source: the spec file, for the message."""
    from h2s_dist.config import JobSpecError

    problems = layout_problems(job.workspace, effective_tracking_uri(job.tracking_uri),
                               workspace_shared=job.workspace_shared, reason=current_reason(ray_address, submitted_to),
                               tracking_origin=_tracking_origin(job), outputs=stage_outputs(job))
    if problems:
        raise JobSpecError(problems, source)


def check_output(
    uri: str, *, ray_address: str | None, shared: bool, field: str, fix: str, what: str = "the ingest"
) -> None:
    """Raise ValueError ("FIELD: URI is a path on this node only, but ...; FIX") when a
    dataset written by Ray tasks of a run from this process (ray_address as check_layout's)
    would land on the disks of the nodes that run them. shared: the user declared the path
    to be on a filesystem every node mounts at the same place."""
    reason = current_reason(ray_address, what=what)
    if stranded(uri, reason, shared=shared):
        raise ValueError(f"{field}: {uri} is a path on this node only, but {reason}, whose tasks would write "
                         f"their part on their own node's disk; {fix}")


def pinned_overrides(job: BaseModel) -> list[str]:
    """`--set` overrides that fix the workspace and MLflow store a submitted job uses to the
    ones checked here: a relative path (or the default sqlite store) would otherwise resolve
    inside Ray's temporary copy of the working directory on the cluster."""
    workspace = str(pathlib.Path(job.workspace).resolve()) if scheme(job.workspace) == "" else job.workspace
    tracking = effective_tracking_uri(job.tracking_uri)
    if tracking.startswith("sqlite:///") and not tracking.startswith("sqlite:////"):
        tracking = f"sqlite:///{pathlib.Path(tracking[len('sqlite:///'):]).resolve()}"
    return [f"workspace={json.dumps(workspace.rstrip('/'))}", f"tracking_uri={json.dumps(tracking)}"]
