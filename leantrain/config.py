"""Dataclass configuration: one source of truth for YAML recipes, ``--set`` overrides and ``--help``.

Every config is a dataclass whose fields carry a docstring (the string literal right after the
field, as in litgpt). :func:`build` turns a plain dict into a dataclass with strict checking:
unknown keys (with a closest-match suggestion), wrong types and failed ``validate()`` checks raise
:class:`ConfigError` naming the dotted key.
"""
from __future__ import annotations

import ast
import dataclasses
import decimal
import difflib
import functools
import inspect
import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from .errors import ConfigError


# ----------------------------------------------------------------------------------- field docs
@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the docstring written under it in the class body (inherited ones too)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str)):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field of ``cls``, nested dataclasses flattened."""
    rows = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(default), docs.get(f.name, "")))
    return rows


# ----------------------------------------------------------------------------------- building
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def parse_number(value: Any) -> decimal.Decimal | None:
    """The number a string spells (``2e-3``, ``1E-4``, ``.5``, ``1_000``, ``+5``), exactly; else None.

    YAML 1.1 (PyYAML) reads ``2e-3`` and ``1E-4`` as strings (its floats need a dot and a signed
    exponent), so numeric fields parse strings themselves: a user's spelling never decides the type."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if not re.fullmatch(r"[+-]?(\d+(_\d+)*(\.(\d+(_\d+)*)?)?|\.\d+(_\d+)*)([eE][+-]?\d+(_\d+)*)?", text):
        return None
    return decimal.Decimal(text.replace("_", ""))


def coerce(value: Any, tp: Any, key: str, numbers_from_text: bool = True) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats, integral floats for
    ints, and (``numbers_from_text``) strings that spell a number for both."""
    origin, raw = typing.get_origin(tp), value
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        # an exact match first (a string stays a string where the union allows one), then numbers from text
        for lenient in (False, True) if numbers_from_text else (False,):
            for arg in typing.get_args(tp):
                try:
                    return coerce(value, arg, key, lenient)
                except ConfigError:
                    pass
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in typing.get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{key}: {value!r} is not one of {_type_name(tp)}{hint}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        (arg, *_) = typing.get_args(tp) or (Any,)
        items = [coerce(v, arg, f"{key}[{i}]", numbers_from_text) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key, numbers_from_text)
    if tp is type(None):
        if value is None:
            return None
    elif tp in (int, float):
        number = parse_number(value) if numbers_from_text else None
        if number is not None:
            value = float(number) if tp is float or number != number.to_integral_value() else int(number)
        if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: must be a finite number, got {raw!r}")
            return float(value)
        if tp is int and isinstance(value, float) and value.is_integer():
            return int(value)  # 1e3 or 1000.0 for a count
        if tp is int and isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {raw!r}")


def build(cls: type, data: Any, prefix: str = "", numbers_from_text: bool = True) -> Any:
    """Make ``cls`` from a mapping, rejecting unknown keys and wrong types; then ``validate()``.
    ``numbers_from_text``: accept strings that spell numbers for int/float fields (text from YAML and
    ``--set``); False checks values made in Python, where a string is a bug."""
    if isinstance(data, cls):
        return data
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of options, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            close = difflib.get_close_matches(str(name), list(fields), n=1)
            hint = f" (did you mean {(prefix + '.' if prefix else '') + close[0]!r}?)" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
        kwargs[name] = coerce(value, hints[name], key, numbers_from_text)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as e:
            raise ConfigError(f"{prefix + '.' if prefix else ''}{e}") from None
    return obj


def check(cond: bool, key: str, message: str) -> None:
    """Raise ConfigError('key: message') unless ``cond`` holds: the building block of validate()."""
    if not cond:
        raise ConfigError(f"{key}: {message}")


def to_dict(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------- YAML + --set
def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"recipe {path} is not a text file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping with sections data/model/train/methods")
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` strings (values parsed as YAML) to a nested dict, in place.

    ``methods.<name>.<option>`` addresses the method entry with that name (or an index).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = _method_entry(node, part, ".".join(parts[: i + 1]))
            else:
                node = node.setdefault(part, [] if part == "methods" else {})
                if not isinstance(node, (dict, list)):
                    raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
        if isinstance(node, list):
            raise ConfigError(f"--set {key}: name an option of a method, e.g. methods.raptr.scale=none")
        node[parts[-1]] = value
    return data


def _method_entry(methods: list, part: str, key: str) -> dict:
    if part.isdigit() and int(part) < len(methods):
        return methods[int(part)]
    for entry in methods:
        if isinstance(entry, dict) and entry.get("name") == part:
            return entry
    raise ConfigError(f"--set {key}: the recipe has no method {part!r} (add it to `methods:` first)")
