"""Search spaces as data (`tune/*.yaml`), turned into Ray Tune objects in one function.

A search space maps dotted paths into a trial's stage spec to one distribution each:

    kind: pretrain_motionnet            # the trial kind the paths belong to (optional)
    space:
      loss.smoothness_weight: {loguniform: [0.1, 10]}     # the paper's lambda2
      optim.lr: {loguniform: [1.0e-5, 1.0e-3]}
      loss.pixel_alpha: {choice: [0.3, 0.4, 0.45]}

    space = load_search_space("tune/pretrain_motionnet.yaml", trial_spec=PretrainSpec, trial_data=data)
    param_space = to_param_space(space)        # {"optim.lr": tune.loguniform(1e-5, 1e-3), ...}
    trial_data = apply_config(data, config)    # a Tune config back into the trial's spec data

Validated once, loudly: unknown keys, malformed ranges and values the trial spec would refuse
(an unknown path, a negative weight) are errors naming the file and the field path. Ray is
imported only by `to_param_space`.
"""

from __future__ import annotations

import copy
import pathlib
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Number = float | int


class SearchSpaceError(ValueError):
    """A search space that cannot be used: each problem as `source: field path: message`."""


class Distribution(BaseModel):
    """One searched value: exactly one of the fields below."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    uniform: tuple[float, float] | None = None
    """[low, high]: uniform on the interval."""
    quniform: tuple[float, float, float] | None = None
    """[low, high, q]: uniform, rounded to multiples of q."""
    loguniform: tuple[float, float] | None = None
    """[low, high], both > 0: uniform in log space (learning rates, loss weights)."""
    qloguniform: tuple[float, float, float] | None = None
    """[low, high, q]: log-uniform, rounded to multiples of q."""
    randint: tuple[int, int] | None = None
    """[low, high): an integer, high excluded."""
    lograndint: tuple[int, int] | None = None
    """[low, high): an integer, log-uniform, high excluded."""
    choice: list[Any] | None = Field(None, min_length=1)
    """One of the listed values, drawn at random."""
    grid: list[Any] | None = Field(None, min_length=1)
    """Every listed value (a grid search; `num_samples` repeats the whole grid)."""

    @model_validator(mode="after")
    def _exactly_one_well_formed(self):
        given = self.given()
        if len(given) != 1:
            names = ", ".join(type(self).model_fields)
            raise ValueError(f"give exactly one distribution (got {len(given)}); one of: {names}")
        name, args = next(iter(given.items()))
        if name in ("uniform", "quniform", "loguniform", "qloguniform", "randint", "lograndint"):
            low, high = args[0], args[1]
            if not low < high:
                raise ValueError(f"{name}: low ({low}) must be below high ({high})")
            if name.startswith(("log", "qlog")) and low <= 0:
                raise ValueError(f"{name}: low must be > 0 for a log scale (got {low})")
            if name.startswith("q") and args[2] <= 0:
                raise ValueError(f"{name}: q must be > 0 (got {args[2]})")
        return self

    def given(self) -> dict[str, Any]:
        return {name: value for name, value in self if value is not None}

    def name_and_args(self) -> tuple[str, Any]:
        return next(iter(self.given().items()))

    def representative_values(self) -> list[Any]:
        """Values the trial spec must accept: both ends of a range, every listed value."""
        name, args = self.name_and_args()
        if name in ("choice", "grid"):
            return list(args)
        if name in ("randint", "lograndint"):
            return [args[0], args[1] - 1]
        return [args[0], args[1]]


class SearchSpaceFile(BaseModel):
    """A `tune/*.yaml` file."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    kind: str | None = None
    """Trial stage kind the paths belong to (checked against the tune stage's trial)."""
    description: str | None = None
    """What this space explores, for people."""
    space: dict[str, Distribution] = Field(min_length=1)
    """Dotted path into the trial's spec (`loss.smoothness_weight`) -> distribution."""


def _problems(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"])
        lines.append(f"{prefix}{path}: {item['msg']}" if path or prefix else item["msg"])
    return lines


def _raise(source: str, lines: list[str]) -> None:
    raise SearchSpaceError("\n".join(f"{source}: {line.rstrip(': ')}" for line in lines))


def parse_search_space(data: Any, source: str = "search_space") -> SearchSpaceFile:
    """A validated SearchSpaceFile from plain data: a file's mapping, or an inline `{path: dist}`."""
    if isinstance(data, Mapping) and "space" not in data:
        data = {"space": dict(data)}
    try:
        return SearchSpaceFile.model_validate(data)
    except ValidationError as err:
        _raise(source, _problems(err))
    raise AssertionError("unreachable")


def _local_path(path: str) -> pathlib.Path:
    """A relative path is looked up in the working directory, then in the checkout the
    package runs from (where `tune/` ships), so `tune/x.yaml` works from anywhere."""
    given = pathlib.Path(path)
    if given.is_absolute() or given.exists():
        return given.resolve()
    shipped = pathlib.Path(__file__).resolve().parents[1] / given
    return shipped if shipped.exists() else given.resolve()


def read_search_space(uri: str) -> SearchSpaceFile:
    """Read and validate a `tune/*.yaml` (a path or any storage URI, e.g. s3://bucket/tune/x.yaml)."""
    from h2s_dist.data import storage

    if "://" not in uri:
        uri = str(_local_path(uri))
    try:
        text = storage.read_bytes(uri).decode()
    except FileNotFoundError:
        raise SearchSpaceError(f"{uri}: no such search-space file; give a path like tune/pretrain_motionnet.yaml") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SearchSpaceError(f"{uri}: not valid YAML: {err}") from None
    return parse_search_space(data, source=uri)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """data["a"]["b"] = value for path "a.b", creating missing mappings (partial nested specs
    keep their other defaults, see specs.Strict)."""
    node = data
    parts = path.split(".")
    for part in parts[:-1]:
        if node.get(part) is None:
            node[part] = {}
        if not isinstance(node[part], dict):
            raise SearchSpaceError(f"{path}: {part!r} is a value, not a nested spec")
        node = node[part]
    node[parts[-1]] = value


def apply_config(trial_data: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the trial's spec data with each sampled `{dotted path: value}` set."""
    data = copy.deepcopy(dict(trial_data))
    for path, value in config.items():
        set_path(data, path, value)
    return data


def check_against_trial(
    space: SearchSpaceFile, trial_spec: type[BaseModel], trial_data: Mapping[str, Any], source: str = "search_space"
) -> None:
    """Every path must name a field of the trial spec that accepts the space's values
    (both ends of ranges, every choice): checked by validating the spec with them."""
    declared = trial_spec.model_fields["kind"].default
    if space.kind is not None and space.kind != declared:
        raise SearchSpaceError(f"{source}: kind: the space is for {space.kind!r} trials, the trial is {declared!r}")
    lines: list[str] = []
    for path, dist in space.space.items():
        for value in dist.representative_values():
            try:
                trial_spec.model_validate(apply_config(trial_data, {path: value}))
            except SearchSpaceError as err:
                lines.append(f"space.{err}")
                break
            except ValidationError as err:
                for item in err.errors():
                    where = ".".join(str(p) for p in item["loc"])
                    lines.append(f"space.{path}: value {value!r} is refused by the trial spec at {where}: {item['msg']}")
                break
    if lines:
        _raise(source, lines)


def to_param_space(space: SearchSpaceFile | Mapping[str, Distribution]) -> dict[str, Any]:
    """The one place search-space data becomes Ray Tune objects: {path: tune.<distribution>}."""
    from ray import tune

    makers = {
        "uniform": tune.uniform,
        "quniform": tune.quniform,
        "loguniform": tune.loguniform,
        "qloguniform": tune.qloguniform,
        "randint": tune.randint,
        "lograndint": tune.lograndint,
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    items = space.space if isinstance(space, SearchSpaceFile) else space
    param_space: dict[str, Any] = {}
    for path, dist in items.items():
        name, args = dist.name_and_args()
        param_space[path] = makers[name](list(args)) if name in ("choice", "grid") else makers[name](*args)
    return param_space
