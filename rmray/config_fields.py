"""Dataclass configs as users meet them: help from each field's docstring, keys grouped by the
config's sections (a class with a ``sections`` mapping of name -> section dataclass, as
:class:`rmray.config.TrainConfig`), YAML files and ``key=value`` overrides, and command-line options --
one machinery for ``rmray train``, ``serve``, ``score`` and ``eval``.

A YAML file may give the keys flat, as TRL's do, or nested under their group::

    model:
      model_name_or_path: Qwen/Qwen2.5-0.5B
    optimization:
      learning_rate: 1.0e-5

An override may name the group too (``optimization.learning_rate=1e-5``). A key under the wrong group,
or given twice, is an error naming both places.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import types
import typing
from typing import Literal

import yaml

from rmray.errors import UsageError


def _classes(cls) -> list:
    """The dataclasses whose fields are ``cls``'s keys: its sections, or ``cls`` itself."""
    return list(getattr(cls, "sections", {}).values()) or [cls]


def fields_of(cls) -> dict[str, dataclasses.Field]:
    """Every key of ``cls`` (a sectioned config's keys unsectioned) and its field."""
    return {f.name: f for klass in _classes(cls) for f in dataclasses.fields(klass)}


def type_hints(cls) -> dict:
    return {k: v for klass in _classes(cls) for k, v in typing.get_type_hints(klass).items()}


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """Each field's docstring (the string literal written under it in the class body), whitespace folded:
    the one place a setting is explained, read by ``--help`` of every command."""
    import ast

    docs: dict[str, str] = {}
    for section in _classes(cls):
        for klass in reversed([k for k in section.__mro__ if dataclasses.is_dataclass(k)]):  # a base's fields too
            body = ast.parse(inspect.getsource(klass)).body[0].body
            for node, nxt in zip(body, body[1:]):
                if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                    docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.lru_cache(maxsize=None)
def field_groups(cls) -> dict[str, tuple[str, list[str]]]:
    """``{section: (what it holds, [key, ...])}`` in the sections' order, what it holds read from the
    section's docstring (``"``model``: the network and how it loads."``); empty for an unsectioned class."""
    groups = {}
    for name, section in getattr(cls, "sections", {}).items():
        about = " ".join((section.__doc__ or "").split()).split(": ", 1)[-1].rstrip(".")
        groups[name] = (about, [f.name for f in dataclasses.fields(section)])
    return groups


def config_help(cls) -> str:
    """``key = default`` lines, each with its help under it, under their group's heading."""
    docs, lines, grouped = field_docs(cls), [], field_groups(cls)
    defaults = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                for f in fields_of(cls).values()}
    sections = grouped.items() if grouped else [("", ("", list(defaults)))]
    for group, (about, keys) in sections:
        if group:
            lines.append(f"\n{group}:" + (f" {about}" if about else ""))
        for key in keys:
            lines.append(f"  {key} = {defaults[key]!r}" + (f"\n      {docs[key]}" if key in docs else ""))
    return "\n".join(lines).lstrip("\n")


def add_options(parser, cls, names: list[str]) -> None:
    """``--kebab-case`` options for the named fields of ``cls``: type, choices and default from the field,
    help from its docstring, so a command line never re-types a default or a choice list."""
    docs, hints = field_docs(cls), type_hints(cls)
    defaults = {name: f.default for name, f in fields_of(cls).items()}
    for name in names:
        hint = hints[name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):  # Optional[X], X | None
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        kwargs = {"default": defaults[name], "help": docs[name]}
        if hint is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(hint) is Literal:
            kwargs["choices"] = list(typing.get_args(hint))
        else:
            kwargs["type"] = hint
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)


def options_of(args, names: list[str]) -> dict:
    """The parsed values of the options ``add_options`` added, by field name."""
    return {name: getattr(args, name) for name in names}


def load_config(path: str | None, overrides, cls):
    """Load ``cls`` from a YAML file (may be None) and ``key=value`` overrides (values parsed as YAML)."""
    values: dict = {}
    if path:
        with open(path) as f:
            loaded = yaml.safe_load(f) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        values = flatten_groups(loaded, cls, path)
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        key = _ungrouped(key.strip(), cls, f"override {item!r}")
        if key not in fields_of(cls):  # named as typed, not blamed on the YAML
            build_config({key: None}, cls, source=f"override {item!r}")
        values[key] = yaml.safe_load(raw) if raw != "" else None
    return build_config(values, cls, source=path or "overrides")


def flatten_groups(loaded: dict, cls, source: str) -> dict:
    """Flat keys as they are; a group's mapping (``model: {...}``) opened into its keys, each checked to
    belong to that group."""
    groups, flat, where = field_groups(cls), {}, {}
    for key, value in loaded.items():
        if key in groups and isinstance(value, dict):
            items = [(f"{key}.{k}", k, v) for k, v in value.items()]
        else:
            items = [(key, key, value)]
        for written, name, item in items:
            if "." in written:
                _ungrouped(written, cls, source)
            if name in flat:
                raise UsageError(f"{source}: config key '{name}' is given twice ({where[name]} and {written})")
            flat[name], where[name] = item, written
    return flat


def _ungrouped(key: str, cls, source: str) -> str:
    """``group.key`` -> ``key``, refusing a key that belongs to another group."""
    if "." not in key:
        return key
    group, name = key.split(".", 1)
    groups = field_groups(cls)
    if group not in groups:
        raise UsageError(f"{source}: '{group}' is not a config group; the groups are {', '.join(groups)}")
    home = next((g for g, (_, names) in groups.items() if name in names), None)
    if home is not None and home != group:
        raise UsageError(f"{source}: config key '{name}' belongs to group '{home}', not '{group}'")
    return name


def build_config(values: dict, cls, source: str = "config"):
    known = fields_of(cls)
    hints = type_hints(cls)
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else "; run `rmray train --help` for the keys"
            raise UsageError(f"{source}: unknown config key '{key}'{hint}")
    kwargs = {key: _coerce(key, value, hints[key]) for key, value in values.items()}
    return cls(**kwargs)


def _coerce(key: str, value, hint):
    """Check YAML values against the field type; ints are accepted for floats."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        if value not in args:
            raise ValueError(f"config key '{key}': {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        value = [value] if isinstance(value, (str, int)) and not isinstance(value, bool) else value
        if not isinstance(value, list):
            raise ValueError(f"config key '{key}': expected a list, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"config key '{key}': expected true/false, got {value!r}")
    if hint in (int, float, str) and (not isinstance(value, hint) or isinstance(value, bool)):
        raise ValueError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    return value
