"""Every config key, with its type, default, bounds and meaning, read from the config classes themselves.

``recsys config keys`` prints it, and ``docs/config.md`` is its output (a test keeps the two equal), so the
reference cannot drift from the code: a new field, a changed default or bound appears in both at once. The
meanings are the fields' docstrings (``use_attribute_docstrings``).
"""

from __future__ import annotations

import inspect
import json
import re
import textwrap
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import to_jsonable_python

WIDTH = 114


@dataclass(frozen=True)
class KeyDoc:
    """One config key: its dotted path, its type in words, its default (``required``, ``default `VALUE```, or
    empty for a section), its bounds and its meaning."""

    key: str
    type: str
    default: str
    bounds: str
    doc: list[str]
    """Paragraphs; a bullet starts with "* "."""


def _type_name(ann: Any) -> str:
    if ann is type(None):
        return "null"
    origin, args = get_origin(ann), get_args(ann)
    if origin is Annotated:  # list[Annotated[int, Field(ge=1)]]: the item's bounds
        inner, bounds = _type_name(args[0]), _bounds(list(args[1:]))
        return f"{inner} {bounds}" if bounds else inner
    if origin is Literal:
        return " | ".join(str(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict or ann is dict:
        return "mapping"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return getattr(ann, "__name__", str(ann))


def _bounds(metadata: list[Any]) -> str:
    parts: list[str] = []
    for m in metadata:
        if isinstance(getattr(m, "metadata", None), list):  # a Field(...) inside Annotated: its own bounds
            if inner := _bounds(m.metadata):
                parts.append(inner)
            continue
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(m, attr, None)
            if value is not None:
                parts.append(f"{sign} {'2**63' if value == 2**63 else value}")
        pattern = getattr(m, "pattern", None)
        if pattern is not None:
            parts.append(f"matches `{pattern}`")
    return ", ".join(parts)


def _default(field: Any) -> str:
    """``required``, ``default `VALUE``` (as it is written in YAML: a string bare, anything else as JSON), or ""
    for a section, whose own keys carry the defaults. ``json_schema_extra={"default_text": ...}`` on a field
    replaces the value where a validator decides it (the split protocol follows the data source)."""
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    if "default_text" in extra:
        return f"default {extra['default_text']}"
    if field.is_required():
        return "required"
    value = field.get_default(call_default_factory=True)
    if isinstance(value, BaseModel):
        return ""
    value = to_jsonable_python(value)  # Path, set, Enum: what a YAML file would hold
    shown = value if isinstance(value, str) and value.strip() == value and value else json.dumps(value)
    return f"default `{shown}`"


def _paragraphs(text: str | None) -> list[str]:
    """A docstring as paragraphs of one line each, a bulleted line starting with "* ", and RST's ``code`` and
    :role:`target` as Markdown's `code`."""
    text = re.sub(r"(:\w+:)?``?([^`]+)``?", r"`\2`", inspect.cleandoc(text or ""))
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text):
        for item in re.split(r"\n(?=\* )", block):  # one paragraph per bullet
            if item.strip():
                out.append(" ".join(item.split()))
    return out


def section_keys(model: type[BaseModel], prefix: str = "", skip: tuple[str, ...] = ()) -> list[KeyDoc]:
    """The keys of a config class, depth first, nested sections under their own dotted prefix."""
    keys = []
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        ann = field.annotation
        nested = [a for a in (get_args(ann) or (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        # a section: its field's description, then its class's (the split protocols, the data sources)
        doc = _paragraphs(field.description) + (_paragraphs(nested[0].__doc__) if nested else [])
        keys.append(KeyDoc(prefix + name, _type_name(ann), _default(field), _bounds(field.metadata), doc))
        if nested:
            keys.extend(section_keys(nested[0], f"{prefix}{name}."))
    return keys


def experiment_keys() -> list[KeyDoc]:
    """The keys of every experiment config except the model's own (:func:`model_keys`)."""
    from recsys.config import ExperimentConfig

    return section_keys(ExperimentConfig)


def model_keys(name: str) -> list[KeyDoc]:
    """The keys of the ``model`` section when ``model.name`` is ``name`` (built-in, registered or offered)."""
    from recsys.models import model_class

    cls = model_class(name)
    return [KeyDoc("model.name", name, "required", "", [f"Selects {cls.__name__}."])] + section_keys(
        cls.config_cls, "model.", skip=("name",)
    )


def _render(keys: list[KeyDoc]) -> list[str]:
    lines = []
    for k in keys:
        facts = [part for part in (k.type, k.default, k.bounds) if part]
        first, *more = k.doc or [""]
        text = f"- `{k.key}` ({'; '.join(facts)})" + (f": {first}" if first else "")
        lines.extend(textwrap.wrap(text, WIDTH, subsequent_indent="  ", break_on_hyphens=False))
        for paragraph in more:  # nested under the key: "* " bullets as a sub-list, prose as a continuation
            bullet = paragraph.startswith("* ")
            lead, rest = ("  - ", "    ") if bullet else ("  ", "  ")
            body = paragraph[2:] if bullet else paragraph
            lines.extend(
                textwrap.wrap(
                    body, WIDTH, initial_indent=lead, subsequent_indent=rest, break_on_hyphens=False
                )
            )
    return lines


def render(models: list[str] | None = None) -> str:
    """The reference as Markdown: the experiment's keys, then the ``model`` keys of each of ``models``
    (default: every registered model)."""
    from recsys.models import REGISTRY, model_class

    names = sorted(REGISTRY) if models is None else list(dict.fromkeys(models))  # each model once
    out = [
        "# Config keys",
        "",
        "Every key of an experiment config, as `recsys config keys` prints it (this file is its output; a test keeps",
        "them equal). Any key can be set in the YAML file or overridden on the command line as `KEY=VALUE`;",
        "`recsys config show -c FILE [KEY=VALUE ...]` prints the config a command would run, every default filled",
        "in. An unknown key or a value out of bounds is an error that names the key.",
        "",
        "## Experiment",
        "",
        *_render(experiment_keys()),
    ]
    for name in names:
        summary = _paragraphs(model_class(name).__doc__)[:1]  # the class docstring's first paragraph
        out += ["", f"## `model.name: {name}`", ""]
        if summary:
            out += [*textwrap.wrap(summary[0], WIDTH), ""]
        out += _render(model_keys(name))
    return "\n".join(out) + "\n"
