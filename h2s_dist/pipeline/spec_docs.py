"""The job-spec field reference (docs/spec_reference.md), generated from the field docstrings.

    h2s schema --markdown -o docs/spec_reference.md

One section for the job, one per stage kind, and one per nested model (optim, loop, ...),
each a table of field, type, default and the docstring.
"""

from __future__ import annotations

import json
import types
import typing
from enum import Enum
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from h2s_dist import config as cfg

_HEADER = """# Job spec reference

Generated from the field docstrings by `h2s schema --markdown -o docs/spec_reference.md`;
do not edit by hand. `h2s schema` writes the same as a JSON schema.

A job is a YAML file: the job fields below, and `stages`, a list of entries, each one
`name` + `needs` + the fields of one stage kind (`kind` selects which). A string value may
refer to an output of a stage listed in `needs`: `${stages.NAME.outputs.KEY}` or, shorter,
`${NAME.KEY}` (KEY may be dotted, e.g. `metrics.loss/total`). A value that is exactly one
reference takes the output's value; a reference inside a longer string is replaced by its
text. Override any value from the command line with `--set PATH=VALUE` (VALUE is YAML; a
stage is picked by name: `--set stages.pretrain.loop.max_steps=10`).

A nested mapping given in YAML is laid over the stage's default for that field: the fields
you leave out keep the stage's values. `optim: {lr: 1.0e-4}` in a pretrain stage is still
the paper's Adam with its milestones, only with another learning rate.

```yaml
name: demo
stages:
  - name: data
    kind: ingest
    source: synthetic
  - name: pretrain
    kind: pretrain_motionnet
    needs: [data]
    data: {dataset: "${data.dataset}", crop_size: 64}
    loop: {max_steps: 100}
```
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a.value if isinstance(a, Enum) else a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join(_type_name(a) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(json.dumps(m.value) for m in annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(info) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except Exception:  # noqa: BLE001 - a factory that cannot run standalone: say so, do not fail the doc
            return "(computed)"
    elif info.default is PydanticUndefined:
        return "**required**"
    else:
        value = info.default
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", exclude_defaults=True)
        if not value:
            return "its defaults"
    elif isinstance(value, Enum):
        value = value.value
    text = json.dumps(value, default=str)
    return f"`{text}`" if len(text) <= 60 else f"`{text[:57]}...`"


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in typing.get_args(annotation) for m in _nested_models(a)]


def _table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> list[str]:
    lines = ["| field | type | default | description |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        doc = " ".join((info.description or "").split()).replace("|", "\\|")
        lines.append(f"| `{name}` | {_type_name(info.annotation)} | {_default(info)} | {doc} |")
    return lines


def spec_reference_markdown() -> str:
    """The whole reference as Markdown (deterministic: same code, same text)."""
    specs = cfg.stage_specs()
    out = [_HEADER, "## Job", "", *_table(cfg.job_model(), skip=("stages",)),
           "| `stages` | list of stage entries | **required** | The stages, each with a unique name; run in dependency order. |",
           "", "Every stage entry also has:", "",
           "| field | type | default | description |", "|---|---|---|---|",
           "| `name` | str | **required** | Stage name: unique in the job, used in `needs`, references and the output folder. |",
           "| `needs` | list[str] | `[]` | Stages that must finish first; only their outputs may be referenced. |", ""]
    nested: dict[str, type[BaseModel]] = {}
    for kind in sorted(specs):
        spec = specs[kind]
        doc = " ".join((spec.__doc__ or "").split())
        out += [f"## Stage `{kind}`", "", doc, "", *_table(spec), ""]
        for info in spec.model_fields.values():
            for model in _nested_models(info.annotation):
                nested.setdefault(model.__name__, model)
    while True:  # nested models of nested models
        found = {m.__name__: m for model in list(nested.values()) for info in model.model_fields.values()
                 for m in _nested_models(info.annotation) if m.__name__ not in nested}
        if not found:
            break
        nested.update(found)
    for name in sorted(nested):
        model = nested[name]
        doc = " ".join((model.__doc__ or "").split())
        out += [f"## {name}", "", doc, "", *_table(model), ""]
    return "\n".join(out)
