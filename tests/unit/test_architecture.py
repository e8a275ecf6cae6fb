"""The house rules of h2s_dist/docs/architecture.md, checked: one registry of stage kinds,
specs that import no torch, stage modules that do not import each other."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
STAGES_DIR = REPO / "h2s_dist" / "train" / "stages"


def _imported_modules(path: pathlib.Path) -> set[str]:
    """Every module a file imports, at top level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_stage_module_imports_another():
    for path in STAGES_DIR.glob("*.py"):
        others = {m for m in _imported_modules(path) if m.startswith("h2s_dist.train.stages")}
        assert not others, f"{path.name} imports {sorted(others)}: move what they share to train/task.py or train/builders.py"


def test_every_stage_module_is_in_the_registry():
    from h2s_dist.registry import STAGES

    modules = {stage.entry_point.partition(":")[0] for stage in STAGES.values()}
    on_disk = {f"h2s_dist.train.stages.{p.stem}" for p in STAGES_DIR.glob("*.py") if p.stem != "__init__"}
    assert modules == on_disk


def test_registry_kinds_specs_and_shapes_agree():
    from h2s_dist.registry import STAGES

    for kind, stage in STAGES.items():
        assert stage.spec.model_fields["kind"].default == kind
        # A worker stage scales over ranks; a driver stage brings its own parallelism.
        assert ("scaling" in stage.spec.model_fields) == (stage.shape == "worker"), kind


def test_specs_import_no_torch_ray_or_mlflow():
    code = ("import sys, h2s_dist.registry, h2s_dist.config; "
            "print(sorted(m for m in ('torch', 'ray', 'mlflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert done.stdout.strip() == "[]"


@pytest.mark.skipif(not (REPO / "jobs" / "ucf101_split1.yaml").is_file(), reason="needs jobs/ucf101_split1.yaml")
def test_validate_imports_no_torch_ray_or_mlflow():
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "h2s_dist", "validate", "jobs/ucf101_split1.yaml"],
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    heavy = sorted(m for m in imported if m.split(".")[0] in ("torch", "ray", "mlflow"))
    assert not heavy, f"h2s validate imported {heavy[:5]}"
