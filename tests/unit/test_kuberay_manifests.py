"""The cluster manifests, checked offline two ways.

1. Against the RayCluster / RayJob CRD fields. No KubeRay CRD JSON schema is to be had from a
   Python package (the KubeRay python client is not on PyPI; the CRD ships with the Go
   operator), so this is a structural check written from the field reference of KubeRay
   v1.6.2 (docs.ray.io, cluster/kubernetes/references/api.html): every key we use must be a
   field of its type, rayStartParams is map[string]string, enums hold allowed values. The API
   server would silently prune an unknown field, so a typo here would otherwise go unseen.
2. Through Ray's own reading of a RayCluster: the autoscaler's
   `_derive_autoscaling_config_from_ray_cr` turns the manifest into the node types it scales
   (resources per pod, min/max workers, per-group idle timeouts) and validates that config.

Plus what the issue asks of them: token auth from a secret, a head without GPUs, 8 GPUs per
GPU pod with /dev/shm in memory and NCCL settings, a CPU-only decode group, GPU pods that
outlive CPU-only stages; and no file that leaves the Jobs API open.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml

CLUSTER = pathlib.Path(__file__).resolve().parents[2] / "cluster"

# Fields of each CRD type (KubeRay v1.6.2 API reference), as far as these manifests reach.
RAY_CLUSTER_SPEC = {"authOptions", "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
                    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
                    "workerGroupSpecs", "upgradeStrategy"}
AUTH_OPTIONS = {"mode", "secretName", "enableK8sTokenAuth"}
AUTOSCALER_OPTIONS = {"resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
                      "upscalingMode", "version", "env", "envFrom", "volumeMounts"}
HEAD_GROUP_SPEC = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
WORKER_GROUP_SPEC = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
                     "rayStartParams", "template", "scaleStrategy", "numOfHosts"}
RAY_JOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                "entrypointNumGpus", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes", "suspend"}
ENUMS = {("authOptions", "mode"): {"disabled", "token"}, ("autoscalerOptions", "version"): {"v1", "v2"},
         ("autoscalerOptions", "upscalingMode"): {"Default", "Aggressive", "Conservative"},
         ("headGroupSpec", "serviceType"): {"ClusterIP", "NodePort", "LoadBalancer"}}


def _load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / "kuberay" / name).read_text())


def _cluster_specs() -> list[tuple[str, dict]]:
    return [("raycluster.yaml", _load("raycluster.yaml")["spec"]),
            ("rayjob.yaml", _load("rayjob.yaml")["spec"]["rayClusterSpec"])]


def _unknown(where: str, got: dict, allowed: set[str]) -> list[str]:
    return [f"{where}.{key}" for key in sorted(set(got) - allowed)]


def structural_errors(spec: dict) -> list[str]:
    """Fields the RayClusterSpec CRD does not have, rayStartParams that are not strings, enums
    out of range, required fields missing."""
    errors = _unknown("spec", spec, RAY_CLUSTER_SPEC)
    errors += _unknown("spec.authOptions", spec.get("authOptions", {}), AUTH_OPTIONS)
    errors += _unknown("spec.autoscalerOptions", spec.get("autoscalerOptions", {}), AUTOSCALER_OPTIONS)
    errors += _unknown("spec.headGroupSpec", spec["headGroupSpec"], HEAD_GROUP_SPEC)
    for (parent, key), allowed in ENUMS.items():
        value = spec.get(parent, {}).get(key)
        if value is not None and value not in allowed:
            errors.append(f"spec.{parent}.{key}: {value!r} not in {sorted(allowed)}")
    groups = [("headGroupSpec", spec["headGroupSpec"])]
    for i, group in enumerate(spec.get("workerGroupSpecs", [])):
        where = f"spec.workerGroupSpecs[{i}]"
        errors += _unknown(where, group, WORKER_GROUP_SPEC)
        errors += [f"{where}.{key}: required" for key in ("groupName", "maxReplicas", "template") if key not in group]
        groups.append((where, group))
    for where, group in groups:
        errors += [f"{where}.rayStartParams.{k}: {v!r} is not a string (map[string]string)"
                   for k, v in group.get("rayStartParams", {}).items() if not isinstance(v, str)]
        if not group["template"]["spec"]["containers"]:
            errors.append(f"{where}.template.spec.containers: empty")
    return errors


@pytest.mark.parametrize(("name", "spec"), _cluster_specs(), ids=["raycluster", "rayjob"])
def test_manifest_uses_only_fields_of_the_kuberay_crd(name, spec):
    assert structural_errors(spec) == [], name


def test_structural_check_catches_a_misspelt_field_and_a_numeric_start_param():
    spec = _load("raycluster.yaml")["spec"]
    spec["workerGroupSpecs"][0]["idleTimeoutSecond"] = 60
    spec["headGroupSpec"]["rayStartParams"]["num-gpus"] = 0
    errors = structural_errors(spec)
    assert "spec.workerGroupSpecs[0].idleTimeoutSecond" in errors
    assert any("rayStartParams.num-gpus" in e for e in errors)


def test_rayjob_uses_only_fields_of_the_rayjob_crd():
    job = _load("rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert _unknown("spec", job["spec"], RAY_JOB_SPEC) == []
    assert job["spec"]["entrypoint"] == "h2s run jobs/ucf101_split1.yaml"
    assert (CLUSTER.parent / "jobs" / "ucf101_split1.yaml").is_file()


@pytest.mark.parametrize(("name", "spec"), _cluster_specs(), ids=["raycluster", "rayjob"])
def test_rays_autoscaler_reads_a_gpu_free_head_8_gpu_pods_and_a_cpu_decode_group(name, spec):
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    config = _derive_autoscaling_config_from_ray_cr(
        {"metadata": {"name": "h2s", "namespace": "default"}, "spec": spec})  # validates the config too
    types = config["available_node_types"]
    assert types["headgroup"]["resources"].get("GPU", 0) == 0
    assert types["gpu-8x"]["resources"]["GPU"] == 8
    assert types["cpu-decode"]["resources"].get("GPU", 0) == 0 and types["cpu-decode"]["max_workers"] >= 1
    # GPU pods outlive the CPU-only stages between training stages; CPU pods go sooner.
    assert types["gpu-8x"]["idle_timeout_s"] >= 3600 > config["idle_timeout_minutes"] * 60
    assert spec["autoscalerOptions"]["version"] == "v2", "only autoscaler v2 honours a group's own idleTimeoutSeconds"


@pytest.mark.parametrize(("name", "spec"), _cluster_specs(), ids=["raycluster", "rayjob"])
def test_gpu_pods_have_8_gpus_shared_memory_and_nccl_settings(name, spec):
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-8x")
    pod = gpu["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == gpu["rayStartParams"]["num-gpus"] == "8"
    volumes = {v["name"]: v for v in pod["volumes"]}
    shm = next(m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm")
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and "NCCL_SOCKET_IFNAME" in env
    assert spec["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


@pytest.mark.parametrize(("name", "spec"), _cluster_specs(), ids=["raycluster", "rayjob"])
def test_token_auth_comes_from_a_secret_and_nothing_disables_it(name, spec):
    assert spec["authOptions"] == {"mode": "token", "secretName": "h2s-ray-token"}
    text = (CLUSTER / "kuberay" / name).read_text()
    assert "RAY_AUTH_MODE" not in text.replace("RAY_AUTH_MODE=token", ""), "the operator sets the mode from authOptions"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        for container in group["template"]["spec"]["containers"]:
            assert not any(e["name"] == "RAY_AUTH_TOKEN" and "value" in e for e in container.get("env", [])), \
                "a token is never written into a manifest"


def test_cluster_launcher_and_image_never_run_ray_without_a_token():
    launcher = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    assert "-e RAY_AUTH_MODE=token" in " ".join(launcher["docker"]["run_options"])
    assert "~/.ray/auth_token" in launcher["file_mounts"]
    assert not any("0.0.0.0" in c for c in launcher["head_start_ray_commands"])
    assert "RAY_AUTH_MODE=disabled" not in (CLUSTER / "Dockerfile").read_text()
