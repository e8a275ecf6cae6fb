"""YAML job specs: a recipe of stages chained through their output URIs (STYLE habit 9).

    job = load_job("jobs/quickstart.yaml", ["stages.pretrain.loop.max_steps=10"])

A job names its stages; each entry is `name` + `needs` + the fields of one stage kind's
spec (`kind` picks which: a discriminated union over every stage module). A string value
may refer to an output of a stage it needs:

    data: {dataset: "${stages.ingest.outputs.dataset}"}     # long form
    motionnet_weights: ${pretrain.motionnet}                 # short form, same thing

A value that is one reference becomes the output's value (any type); a reference inside a
longer string is replaced by the output's text. A job's `inputs` (values from outside the job,
such as another job's models) are read as `${inputs.NAME}` and replaced when the job loads:

    inputs: {ucf101_stacked: "models:/stacked_temporal/3"}       # --set inputs.ucf101_stacked=...
    init_weights: ${inputs.ucf101_stacked}
 `KEY` may be dotted (`metrics.loss/total`).
References are resolved by the runner from the finished stage's `outputs.json`.

Everything is checked once, loudly, before anything runs: every error names the file and
the field path, e.g. `jobs/x.yaml: stages[2].optim.lr: Input should be greater than 0`.
"""

from __future__ import annotations

import copy
import pathlib
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import lru_cache
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError, create_model, model_validator

from h2s_dist.specs.common import SpecProblems

ENTRY_FIELDS = ("name", "needs")
JOBS_ROOT = ".h2s/jobs"
"""Where jobs without a `workspace` keep their stage folders (`<JOBS_ROOT>/<name>`); h2s predict
resolves a bare job name there."""
_NAME_RE = r"^[A-Za-z0-9_-]+$"
# ${stages.NAME.outputs.KEY} or ${NAME.KEY}; KEY may hold dots and slashes (metric names).
REFERENCE_RE = re.compile(r"\$\{\s*(?:stages\.([A-Za-z0-9_-]+)\.outputs|([A-Za-z0-9_-]+))\.([^}\s]+)\s*\}")
# ${inputs.NAME}: a job input, replaced at load time (so no stage may be called `inputs`).
INPUT_RE = re.compile(r"\$\{\s*inputs\.([A-Za-z0-9_-]+)\s*\}")


class JobSpecError(ValueError):
    """A job spec that cannot run: every problem as (field path, message), plus the file."""

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        super().__init__(self._text())

    def _text(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(f"{prefix}{path}: {message}" if path else f"{prefix}{message}" for path, message in self.problems)

    def with_source(self, source: str) -> JobSpecError:
        return JobSpecError(self.problems, source)


# ----------------------------------------------------------------------------- stage kinds


def stage_specs() -> dict[str, type[BaseModel]]:
    """Stage kind -> its spec model (from h2s_dist.registry: pure pydantic, no torch)."""
    from h2s_dist.registry import STAGES

    return {kind: stage.spec for kind, stage in STAGES.items()}


def _entry_model(kind: str, spec: type[BaseModel]) -> type[BaseModel]:
    """SPEC + `name` + `needs`: one stage entry of a job, validated like the spec itself."""
    return create_model(
        f"{spec.__name__.removesuffix('Spec')}Stage",
        __base__=spec,
        __doc__=spec.__doc__,
        name=(str, Field(pattern=_NAME_RE, description="Stage name: unique in the job, used in `needs`, references and the output folder.")),
        needs=(list[str], Field(default_factory=list, description="Stages that must finish first; only their outputs may be referenced.")),
    )


@lru_cache(maxsize=1)
def stage_entry_models() -> dict[str, type[BaseModel]]:
    for kind, spec in stage_specs().items():
        assert spec.model_fields["kind"].default == kind, f"{spec.__name__}.kind is not {kind!r}"
        assert not set(ENTRY_FIELDS) & set(spec.model_fields), f"{spec.__name__} uses a reserved field name"
    return {kind: _entry_model(kind, spec) for kind, spec in stage_specs().items()}


def _kind_of(value: Any) -> str | None:
    if isinstance(value, Mapping):
        return value.get("kind")
    return getattr(value, "kind", None)


def stage_spec_of(entry: BaseModel, data: Mapping[str, Any] | None = None) -> BaseModel:
    """The stage's own spec (what `launch` takes) from an entry, or from `data` (its
    fields with references resolved)."""
    spec = stage_specs()[entry.kind]
    if data is None:
        data = entry.model_dump(mode="json", exclude=set(ENTRY_FIELDS))
    return spec.model_validate(data)


# ----------------------------------------------------------------------------- the job model


def _job_model_base():
    entries = stage_entry_models()
    union = Union[tuple(Annotated[model, Tag(kind)] for kind, model in entries.items())]  # noqa: UP007
    return Annotated[union, Discriminator(_kind_of)]


class _JobBase(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str = Field(pattern=_NAME_RE)
    """Job name: the MLflow parent run's name and the default experiment and workspace."""
    workspace: str | None = None
    """URI (path, file:// or s3://) under which each stage writes `<stage name>-<spec hash>/`;
    null = `.h2s/jobs/<name>` in the working directory. A job on more than one node needs
    s3:// here (or a shared filesystem and `workspace_shared: true`)."""
    workspace_shared: bool = False
    """The job's local paths (a path or file:// `workspace` or ingest `output`, a sqlite:/// or
    file:// `tracking_uri`) are on a filesystem every Ray node mounts at the same place (NFS,
    or a cluster of one machine). Without it, a job that may span nodes (`h2s submit`, a Ray address, a cluster of
    more than one node) is refused unless its workspace is s3:// and its tracking URI a server."""
    tracking_uri: str | None = None
    """MLflow tracking URI (`http://host:5000` or `sqlite:///path.db`); null = $MLFLOW_TRACKING_URI,
    else the local sqlite store `.h2s/mlflow.db`. A job on more than one node needs a
    tracking server (or `workspace_shared`)."""
    experiment: str | None = None
    """MLflow experiment of the job's runs; null = the job name."""
    ray_address: str | None = None
    """Ray cluster for stages with `scaling.num_workers >= 1` (`ray://host:10001`, `auto`);
    null = $RAY_ADDRESS, else an embedded local Ray."""
    inputs: dict[str, str] = {}
    """Values the job takes from outside, e.g. another job's models as a URI or a registered
    version `models:/NAME/VERSION`; stage fields read them as `${inputs.NAME}`, a user sets
    them with `--set inputs.NAME=VALUE`. Each has a documented default in the job file."""

    @model_validator(mode="before")
    @classmethod
    def _replace_inputs(cls, data):
        if isinstance(data, dict) and isinstance(data.get("stages"), list):
            inputs = data.get("inputs") or {}
            stages = [replace_inputs(stage, inputs, f"stages[{i}]") for i, stage in enumerate(data["stages"])]
            data = {**data, "stages": stages}
        return data

    @model_validator(mode="after")
    def _defaults_and_graph(self):
        if self.workspace is None:
            self.workspace = f"{JOBS_ROOT}/{self.name}"
        if self.experiment is None:
            self.experiment = self.name
        problems = graph_problems(self.stages)  # type: ignore[attr-defined]
        if not problems:
            from h2s_dist.specs.wiring import weights_problems

            problems = weights_problems(self.stages, whole_reference)  # type: ignore[attr-defined]
        if problems:
            raise JobSpecError(problems)
        return self

    def stage(self, name: str) -> BaseModel:
        for entry in self.stages:  # type: ignore[attr-defined]
            if entry.name == name:
                return entry
        raise KeyError(name)


@lru_cache(maxsize=1)
def job_model() -> type[BaseModel]:
    """The JobSpec model, built once from the stage kinds that are available."""
    return create_model(
        "JobSpec",
        __base__=_JobBase,
        __doc__="A job: stages run in dependency order, each writing to its own output URI.",
        stages=(list[_job_model_base()], Field(min_length=1, description="The stages, each with a unique name; run in dependency order.")),
    )


def __getattr__(name: str):  # `from h2s_dist.config import JobSpec` builds the model lazily
    if name == "JobSpec":
        return job_model()
    raise AttributeError(name)


# ----------------------------------------------------------------------------- references and the graph


def iter_strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(field path, text) of every string inside nested dicts and lists."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from iter_strings(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from iter_strings(item, f"{path}[{index}]")


def references(text: str) -> list[tuple[str, str]]:
    """[(stage name, output key)] referenced in `text`."""
    return [(m[1] or m[2], m[3]) for m in REFERENCE_RE.finditer(text)]


def whole_reference(text: str) -> tuple[str, str] | None:
    """(stage name, output key) when `text` is exactly one reference (its value is the output's
    value, of any type), else None."""
    whole = REFERENCE_RE.fullmatch(text.strip())
    return (whole[1] or whole[2], whole[3]) if whole else None


def entry_references(entry: BaseModel) -> list[tuple[str, str, str]]:
    """[(field path, stage, key)] of every reference in one stage entry's fields."""
    data = entry.model_dump(mode="json", exclude=set(ENTRY_FIELDS))
    return [(path, stage, key) for path, text in iter_strings(data) for stage, key in references(text)]


def graph_problems(entries: Sequence[BaseModel]) -> list[tuple[str, str]]:
    """Duplicate names, unknown or self `needs`, references outside `needs`, cycles."""
    problems: list[tuple[str, str]] = []
    first_index: dict[str, int] = {}
    for i, entry in enumerate(entries):
        if entry.name in first_index:
            problems.append((f"stages[{i}].name", f"duplicate stage name {entry.name!r} (also stages[{first_index[entry.name]}])"))
        else:
            first_index[entry.name] = i
    for i, entry in enumerate(entries):
        for j, need in enumerate(entry.needs):
            if need == entry.name:
                problems.append((f"stages[{i}].needs[{j}]", f"stage {need!r} cannot need itself"))
            elif need not in first_index:
                problems.append((f"stages[{i}].needs[{j}]", f"unknown stage {need!r}; stages are: {', '.join(first_index)}"))
        for path, stage, key in entry_references(entry):
            if stage not in entry.needs:
                problems.append((
                    f"stages[{i}].{path}",
                    f"refers to stage {stage!r} (output {key!r}), which is not in this stage's needs; add it to needs",
                ))
    if not problems:
        cycle = find_cycle(entries)
        if cycle:
            i = first_index[cycle[0]]
            problems.append((f"stages[{i}].needs", "dependency cycle: " + " -> ".join(cycle)))
    return problems


def find_cycle(entries: Sequence[BaseModel]) -> list[str] | None:
    """A cycle of stage names (first name repeated at the end), or None."""
    needs = {e.name: list(e.needs) for e in entries}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for need in needs.get(name, []):
            if state.get(need) == 1:
                return path[path.index(need):] + [need] if need in path else [name, need, name]
            if need in needs and state.get(need) is None:
                found = visit(need, path + [need])
                if found:
                    return found
        state[name] = 2
        return None

    for name in needs:
        if state.get(name) is None:
            found = visit(name, [name])
            if found:
                return found
    return None


def topological_order(entries: Sequence[BaseModel]) -> list[BaseModel]:
    """Entries ordered so that each comes after its needs; ties keep the file's order."""
    by_name = {e.name: e for e in entries}
    done: set[str] = set()
    ordered: list[BaseModel] = []
    pending = list(entries)
    while pending:
        ready = next(e for e in pending if all(n in done for n in e.needs))  # acyclic: always one
        pending.remove(ready)
        done.add(ready.name)
        ordered.append(by_name[ready.name])
    return ordered


def replace_inputs(data: Any, inputs: Mapping[str, Any], where: str = "") -> Any:
    """`data` with every `${inputs.NAME}` replaced from the job's `inputs` (a whole reference by
    the value, one inside a longer string by its text); JobSpecError names an unknown input."""
    if isinstance(data, Mapping):
        if where.count(".") == 0 and data.get("name") == "inputs":
            raise JobSpecError([(f"{where}.name", "`inputs` is reserved for ${inputs.NAME}: rename the stage")])
        return {k: replace_inputs(v, inputs, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [replace_inputs(v, inputs, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data
    for name in INPUT_RE.findall(data):
        if name not in inputs:
            known = ", ".join(sorted(inputs)) or "none"
            raise JobSpecError([(where, f"unknown job input {name!r}; the job's inputs are: {known} "
                                        "(declare it under `inputs:` or --set inputs.NAME=VALUE)")])
    whole = INPUT_RE.fullmatch(data.strip())
    if whole:
        return inputs[whole[1]]
    return INPUT_RE.sub(lambda m: str(inputs[m[1]]), data)


def resolve_references(data: Any, outputs: Mapping[str, Mapping[str, Any]], where: str = "") -> Any:
    """`data` with every `${...}` replaced from `outputs` ({stage: its outputs dict})."""
    if isinstance(data, Mapping):
        return {k: resolve_references(v, outputs, f"{where}.{k}" if where else str(k)) for k, v in data.items()}
    if isinstance(data, list):
        return [resolve_references(v, outputs, f"{where}[{i}]") for i, v in enumerate(data)]
    if not isinstance(data, str) or "${" not in data:
        return data
    whole = whole_reference(data)
    if whole:
        return _lookup(outputs, *whole, where)
    return REFERENCE_RE.sub(lambda m: str(_lookup(outputs, m[1] or m[2], m[3], where)), data)


def _lookup(outputs: Mapping[str, Mapping[str, Any]], stage: str, key: str, where: str) -> Any:
    if stage not in outputs:
        raise JobSpecError([(where, f"stage {stage!r} has no outputs yet (is it in needs?)")])
    value: Any = outputs[stage]
    if key in value:  # a key with dots in it (metric names) wins over a nested path
        return value[key]
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            known = ", ".join(sorted(outputs[stage])) or "none"
            raise JobSpecError([(where, f"stage {stage!r} has no output {key!r}; its outputs are: {known}")])
        value = value[part]
    return value


# ----------------------------------------------------------------------------- loading


def format_location(loc: Sequence[Any], data: Any = None) -> str:
    """pydantic's loc -> `stages[2].optim.lr` (the union's tag after a stage index is dropped)."""
    parts: list[str] = []
    kinds = set(stage_specs())
    for index, item in enumerate(loc):
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif index == 2 and loc[0] == "stages" and item in kinds:
            continue  # the discriminated union adds the kind to the path
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


def problems_of(error: ValidationError) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, JobSpecError):
            problems.extend(cause.problems)
            continue
        if isinstance(cause, SpecProblems):  # field paths relative to the stage that refused them
            where = format_location(item["loc"])
            problems.extend((f"{where}.{path}" if where else path, message) for path, message in cause.problems)
            continue
        message = item["msg"]
        if item["type"] == "union_tag_invalid":
            message = f"unknown stage kind {item['input'].get('kind')!r}; known: {', '.join(sorted(stage_entry_models()))}"
            problems.append((format_location(item["loc"]) + ".kind", message))
            continue
        if item["type"] == "union_tag_not_found":
            message = f"missing `kind`; one of: {', '.join(sorted(stage_entry_models()))}"
        problems.append((format_location(item["loc"]), message))
    return problems


def validate_job(data: Any, source: str | None = None) -> BaseModel:
    """A JobSpec from plain data, or JobSpecError naming `source` and every bad field."""
    try:
        return job_model().model_validate(data)
    except ValidationError as err:
        raise JobSpecError(problems_of(err), source) from None
    except JobSpecError as err:
        raise err.with_source(source) if source else err from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML); `a[0]` is the same as `a.0`."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise JobSpecError([(f"--set {text}", "expected KEY.PATH=VALUE, e.g. stages.pretrain.loop.max_steps=10")])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise JobSpecError([(f"--set {text}", f"value is not valid YAML: {err}")]) from None
    key = re.sub(r"\[(-?\d+)\]", r".\1", key.strip())  # a[0].b is a.0.b
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """A copy of `data` with each `--set a.b.c=value` applied; list items are picked by
    index or, for lists of named items (stages), by name. Missing mapping keys are created."""
    data = copy.deepcopy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            where = ".".join(path[: depth + 1])
            if isinstance(node, list):
                index = _list_index(node, part)
                if index is None:
                    raise JobSpecError([(f"--set {text}", f"{where}: no item with index or name {part!r}")])
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:  # absent or null: a sub-mapping to fill
                        node[part] = {}
                    node = node[part]
            else:
                raise JobSpecError([(f"--set {text}", f"{'.'.join(path[:depth])} is a value, not a mapping or list")])
    return data


def _list_index(items: list, part: str) -> int | None:
    if re.fullmatch(r"-?\d+", part):
        index = int(part)
        return index if -len(items) <= index < len(items) else None
    for index, item in enumerate(items):
        if isinstance(item, Mapping) and item.get("name") == part:
            return index
    return None


def read_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    source = str(path)
    try:
        text = pathlib.Path(path).read_text()
    except OSError as err:
        raise JobSpecError([("", f"cannot read the job spec: {err.strerror}")], source) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise JobSpecError([("", f"not valid YAML: {err}")], source) from None
    if not isinstance(data, dict):
        raise JobSpecError([("", "a job spec is a mapping with `name` and `stages`")], source)
    return data


def load_job(path: str | pathlib.Path, overrides: Sequence[str] = ()) -> BaseModel:
    """Read, override and validate a YAML job spec; JobSpecError (a ValueError) names the
    file and each bad field. Nothing runs here."""
    source = str(path)
    data = read_yaml(path)
    try:
        data = apply_overrides(data, overrides)
    except JobSpecError as err:
        raise err.with_source(source) from None
    return validate_job(data, source)


def job_to_yaml(job: BaseModel) -> str:
    """The resolved spec (defaults filled in) as YAML, stage fields after name/needs/kind."""
    data = job.model_dump(mode="json")
    data["stages"] = [
        {k: s[k] for k in ("name", "needs", "kind")} | {k: v for k, v in s.items() if k not in ("name", "needs", "kind")}
        for s in data["stages"]
    ]
    return yaml.safe_dump(data, sort_keys=False, width=110)


def job_json_schema() -> dict[str, Any]:
    return job_model().model_json_schema()
