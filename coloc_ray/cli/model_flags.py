"""Argparse flags derived from a pydantic model: one flag per field, so the model stays the one source of truth.

``add_model_flags(parser, Model)`` adds ``--field-name`` for every field (help = the field's description and its
default, ``choices`` from a ``Literal``, the type from the annotation, bools as ``--flag/--no-flag``, lists as
comma-separated text, dicts as a JSON object). ``build_model(Model, args)`` turns the parsed flags back into the
model, passing only the flags the user gave: pydantic's defaults stay the one set of defaults, and a validation
error becomes one line naming the flag.
"""

from __future__ import annotations

import argparse
import json
import re
import types
from typing import Any, Iterable, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticUndefined

from coloc_ray.errors import UserError


def flag_name(field: str) -> str:
    """``max_new_tokens`` -> ``--max-new-tokens``."""
    return "--" + field.replace("_", "-")


def _unwrap_optional(tp: Any) -> Any:
    """``Optional[X]`` / ``X | None`` -> ``X``; anything else unchanged."""
    if get_origin(tp) in (Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp


def _kind(name: str, annotation: Any) -> tuple[str, Any]:
    """(kind, detail) of a field: ("bool", None), ("choice", values), ("scalar", type), ("list", item type),
    ("dict", None). A type no flag can carry is a programming error: exclude the field instead."""
    tp = _unwrap_optional(annotation)
    origin = get_origin(tp)
    if tp is bool:
        return "bool", None
    if origin is Literal:
        return "choice", list(get_args(tp))
    if tp in (int, float, str):
        return "scalar", tp
    if origin is list and get_args(tp) and get_args(tp)[0] in (int, float, str):
        return "list", get_args(tp)[0]
    if tp is dict or origin is dict:
        return "dict", None
    raise TypeError(f"field {name!r} ({annotation!r}) has no flag form; add it to the command's exclusion list")


def _default_text(field) -> str | None:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return None
    else:
        value = field.default
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value)
    return None if value is None else str(value)  # "null" would only repeat what the description says


def _help(name: str, field, kind: str) -> str:
    # A description may open with the flag's own name ("--model: ..."): argparse prints the flag already.
    text = re.sub(r"^--[\w-]+:\s*", "", field.description or "")
    notes = {"list": "comma-separated", "dict": "a JSON object"}.get(kind, "")
    default = _default_text(field)
    if default is not None and default != "":
        notes = f"{notes}; default: {default}" if notes else f"default: {default}"
    text = f"{text} ({notes})" if notes else text
    return text.replace("%", "%%")  # argparse %-formats help strings


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel], exclude: Iterable[str] = (),
                    aliases: dict[str, Iterable[str]] | None = None, require: bool = True) -> None:
    """Add one flag per field of ``model`` not in ``exclude``; a field without a default is a required flag.

    Every flag defaults to "absent" (``argparse.SUPPRESS``), so :func:`model_kwargs` sees only what was given.

    Args:
        aliases: further flag names of a field (``{"max_steps": ["--steps"]}``): old names keep working.
        require: False when the required fields may come from elsewhere (a config file) and the command checks.
    """
    skip, aliases = set(exclude), aliases or {}
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind, detail = _kind(name, field.annotation)
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": _help(name, field, kind)}
        if field.is_required() and require:
            kw["required"] = True
        if kind == "bool":
            kw["action"] = argparse.BooleanOptionalAction
        elif kind == "choice":
            kw.update(choices=detail, type=type(detail[0]))
        elif kind == "scalar":
            kw["type"] = detail
        elif kind == "list":
            kw["metavar"] = "A,B,..."
        else:
            kw["metavar"] = "JSON"
        parser.add_argument(flag_name(name), *aliases.get(name, ()), **kw)


def _list_value(name: str, text: str, item: type) -> list:
    parts = [x.strip() for x in text.split(",") if x.strip()]
    try:
        return [item(x) for x in parts]
    except ValueError:
        raise UserError(f"{flag_name(name)} {text!r}: expected comma-separated {item.__name__} values "
                        "like 1,2,3") from None


def _dict_value(name: str, text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{flag_name(name)} {text!r}: not valid JSON ({e.msg}); give an object like "
                        "'{\"key\": 1}'") from None
    if not isinstance(value, dict):
        raise UserError(f"{flag_name(name)} {text!r}: expected a JSON object like '{{\"key\": 1}}'")
    return value


def model_kwargs(args: argparse.Namespace, model: type[BaseModel], exclude: Iterable[str] = ()) -> dict:
    """The model's keyword arguments from the flags the user gave (absent flags are left out)."""
    skip, out = set(exclude), {}
    for name, field in model.model_fields.items():
        if name in skip or not hasattr(args, name):
            continue
        value = getattr(args, name)
        kind, detail = _kind(name, field.annotation)
        if kind == "list" and isinstance(value, str):
            value = _list_value(name, value, detail)
        elif kind == "dict" and isinstance(value, str):
            value = _dict_value(name, value)
        out[name] = value
    return out


def build_model(model: type[BaseModel], args: argparse.Namespace, exclude: Iterable[str] = ()):
    """``model(**model_kwargs(args))``; a validation error becomes one UserError line naming the flag."""
    try:
        return model(**model_kwargs(args, model, exclude))
    except ValidationError as e:
        err = e.errors()[0]
        where = flag_name(str(err["loc"][0])) if err["loc"] else model.__name__
        raise UserError(f"{where}: {err['msg']} (got {err.get('input')!r})") from None
