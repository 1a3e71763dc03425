"""Reading what a person wrote into a config: YAML files, ``key=value`` overrides, and
binding both to a dataclass schema (the schema itself lives with its users, e.g.
:mod:`audiocnn.training.config`).

YAML is read strictly: a key given twice is an error (plain YAML keeps the last one
silently), errors name the file, line and column, and aliases are allowed as long as the
document expands to at most :data:`MAX_YAML_VALUES` values (a "billion laughs" file is
refused before anything copies it). ``key=value`` overrides have one parser for every
command (:func:`parse_overrides`; values are YAML scalars or flow lists/mappings, bounded
the same way). Binding checks every key against the schema (an unknown key names the
closest valid one and lists them all) and coerces values to the field types.

Why not a library: OmegaConf would still need the alias bound in front of it (it expands
aliases into its own node tree, so a "billion laughs" file takes the memory first), does
not suggest the closest key or list the valid ones, and adds a dependency (antlr4);
pydantic does not read YAML, so the strict loader, the bounds and the line/column errors
stay ours, and its multi-line messages would need rewording into one line each. Neither
removes more than the type coercion (about 60 lines) while keeping every check.

Library messages name the argument at fault (``overrides``, see
:class:`audiocnn.errors.AudiocnnError`'s ``arguments``); the CLI shows it as ``--set``.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from pathlib import Path
from typing import Any, Callable, Union

import yaml

from audiocnn.errors import ConfigError

#: most values (mapping keys, items, scalars) one YAML document or override value may
#: hold once its aliases are expanded: a config has about a hundred; nine levels of nine
#: aliases ("billion laughs") would expand to 387 million and take the machine's memory
MAX_YAML_VALUES = 100_000
#: deepest nesting of lists and mappings in a config
MAX_YAML_DEPTH = 64
#: the argument an override error names (the CLI shows it as ``--set``)
OVERRIDES = "overrides"


# -- YAML text -----------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping: plain YAML keeps the
    last one silently, so ``lr: 0.1`` ... ``lr: 0.001`` would train with whichever came last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _value in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.get(key)
            except TypeError:  # unhashable key: let SafeLoader report it
                continue
            if first is not None:
                raise _DuplicateKey(key, first, key_node.start_mark.line + 1)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, first: int, line: int) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first, self.line = key, first, line


def _yaml_problem(exc: yaml.YAMLError) -> str:
    if isinstance(exc, _DuplicateKey):
        return f"duplicate key {exc.key!r}"
    return getattr(exc, "problem", None) or (str(exc).splitlines() or [type(exc).__name__])[0]


def _yaml_error(where: str, exc: yaml.YAMLError) -> ConfigError:
    """One line with the file, line and column of a YAML error."""
    if isinstance(exc, _DuplicateKey):
        return ConfigError(
            f"{where}:{exc.line}: duplicate key {exc.key!r} (first given on line {exc.first})", hint="keep one of them"
        )
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    at = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
    return ConfigError(f"{where}{at}: not valid YAML ({_yaml_problem(exc)})")


def check_yaml_size(data: Any, where: str, arguments: tuple[str, ...] = ()) -> None:
    """Refuse a parsed YAML value whose aliases would expand beyond :data:`MAX_YAML_VALUES`
    values, nest deeper than :data:`MAX_YAML_DEPTH`, or that contains itself (``&a [*a]``).

    The parser shares an aliased value rather than copying it, so parsing is cheap; this
    walk counts the expanded size with each shared value counted once per use but visited
    once, so it stops early and never copies anything. ``arguments`` go on the error.
    """
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def fail(message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{where}: {message}", hint=hint, arguments=arguments)

    def size(obj: Any, depth: int) -> int:
        if not isinstance(obj, (dict, list)):
            return 1
        if id(obj) in sizes:
            return sizes[id(obj)]
        if id(obj) in active:
            raise fail("a YAML alias refers to a value that contains it", "write the value out")
        if depth > MAX_YAML_DEPTH:
            raise fail(f"lists and mappings nested more than {MAX_YAML_DEPTH} levels deep")
        active.add(id(obj))
        n = 1
        for item in [*obj.keys(), *obj.values()] if isinstance(obj, dict) else obj:
            n += size(item, depth + 1)
            if n > MAX_YAML_VALUES:
                raise fail(
                    f"YAML aliases expand to more than {MAX_YAML_VALUES:,} values",
                    "write the values out; a config needs no aliases",
                )
        active.discard(id(obj))
        sizes[id(obj)] = n
        return n

    size(data, 0)


def load_yaml_text(text: str, where: str = "<string>", check: Callable[[Any, str], None] | None = None) -> Any:
    """Parse YAML with duplicate keys rejected and aliases bounded (:func:`check_yaml_size`);
    ConfigError says where it is wrong. ``check(data, where)`` runs before the size check
    (e.g. :func:`check_keys`, so an unknown key is the error a user sees first)."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise _yaml_error(where, exc) from None
    except RecursionError:
        raise ConfigError(f"{where}: lists and mappings nested too deeply") from None
    if check is not None:
        check(data, where)
    check_yaml_size(data, where)
    return data


def read_yaml(path: str | os.PathLike, check: Callable[[Any, str], None] | None = None) -> dict[str, Any]:
    """A config file's mapping (``{}`` for an empty file), read as :func:`load_yaml_text`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file", hint="see the files in configs/")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})",
            hint="save the file as UTF-8",
        ) from None
    data = load_yaml_text(text, str(path), check)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping of keys to values")
    return data


# -- overrides: the one key=value parser ----------------------------------------------------


def parse_value(text: str, where: str | None = None, arguments: tuple[str, ...] = ()) -> Any:
    """An override's value as a YAML scalar (or flow list/mapping), bounded like a config
    file (see :func:`load_yaml_text`); ``where`` names it in errors."""
    if not text.strip():
        return None
    where = where or f"value {text[:40] + ('...' if len(text) > 40 else '')!r}"
    try:
        value = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse value {text!r} as YAML ({_yaml_problem(exc)})") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply", arguments=arguments) from None
    check_yaml_size(value, where, arguments)
    return value


def parse_overrides(items: typing.Iterable[str]) -> list[tuple[str, Any]]:
    """``key=value`` strings as (key, value) pairs, in order; every command's overrides
    (``train --set``, ``features --set``) go through here. Errors name the argument
    ``overrides`` (``overrides=KEY`` for a value), which the CLI shows as ``--set``."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"`{OVERRIDES}` expects key=value, got {item!r}", arguments=(OVERRIDES,))
        out.append((key, parse_value(text, f"{OVERRIDES}={key}", (OVERRIDES,))))
    return out


# -- binding to a dataclass schema --------------------------------------------------------------
#
# A nested section given a scalar is expanded by the section's ``from_scalar(value)``
# classmethod when it has one (``schedule=plateau`` sets ``schedule.name``).


def valid_keys(schema: type, prefix: str = "") -> list[str]:
    """Every addressable key, dotted for nested sections (what the error messages list)."""
    keys = []
    for f in dataclasses.fields(schema):
        name = prefix + f.name
        tp = typing.get_type_hints(schema)[f.name]
        keys.append(name)
        if dataclasses.is_dataclass(tp):
            keys.extend(valid_keys(tp, name + "."))
    return keys


def _unknown_key(key: str, schema: type, prefix: str) -> ConfigError:
    valid = valid_keys(schema, prefix)
    close = difflib.get_close_matches(prefix + key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return ConfigError(f"unknown config key {prefix + key!r}; {hint}valid keys: {', '.join(valid)}")


_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")


def _to_number(value: Any, tp: type, key: str) -> Any:
    """An int or float field's value; YAML reads ``1e-4`` as a string, so numbers given as
    strings are accepted where a number is expected."""
    word = "an integer" if tp is int else "a number"
    if not isinstance(value, bool):
        number = value
        if isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                number = None
        if isinstance(number, (int, float)):
            if tp is float:
                return float(number)
            if isinstance(number, int):
                return number
            if number.is_integer():
                return int(number)
    raise ConfigError(f"config key {key!r} must be {word}, got {value!r}")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert a YAML value to the field type ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "~", "")):
            return None
        return _coerce(value, args[0], key)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            return value.lower() in _TRUE
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if tp in (int, float):
        return _to_number(value, tp, key)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} must be a string, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            value = [value]
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping, got {value!r}")
        return {str(k): v for k, v in value.items()}
    return value


def _section(schema: type, key: str, value: Any, prefix: str) -> dict[str, Any]:
    """A nested section's mapping: ``value`` itself, or a scalar expanded by the section's
    ``from_scalar``."""
    if isinstance(value, dict):
        return value
    expand = getattr(schema, "from_scalar", None)
    if expand is None:
        raise ConfigError(f"config key {prefix + key!r} must be a mapping, got {value!r}")
    return expand(value)


def build(schema: type, data: dict[str, Any], prefix: str = "") -> Any:
    """An instance of ``schema`` from a raw mapping (keys checked, values coerced; not validated)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<top>'!r} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(schema)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(str(key), schema, prefix)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build(tp, _section(tp, key, value, prefix), prefix + key + ".")
        else:
            kwargs[key] = _coerce(value, tp, prefix + key)
    return schema(**kwargs)


def apply_overrides(data: dict[str, Any], overrides: typing.Iterable[str], schema: type) -> dict[str, Any]:
    """Apply ``key=value`` strings (dotted keys of ``schema``) to a copy of a raw config mapping."""
    out = _deep_copy(data)
    for key, value in parse_overrides(overrides):
        parts = key.split(".")
        _check_path(parts, schema)
        node, cls = out, schema
        for part in parts[:-1]:
            child = node.get(part)
            cls = typing.get_type_hints(cls)[part] if dataclasses.is_dataclass(cls) else None
            if not isinstance(child, dict):
                # `schedule: plateau` shorthand already in the file: expand before descending
                scalar = child is not None and hasattr(cls, "from_scalar")
                child = _section(cls, part, child, "") if scalar else {}
                node[part] = child
            node = child
        node[parts[-1]] = value
    return out


def _check_path(parts: list[str], schema: type) -> None:
    cls: Any = schema
    prefix = ""
    for i, part in enumerate(parts):
        hints = typing.get_type_hints(cls)
        if part not in hints:
            raise _unknown_key(part, cls, prefix)
        tp = hints[part]
        if dataclasses.is_dataclass(tp):
            cls, prefix = tp, prefix + part + "."
            continue
        if i < len(parts) - 1:
            if typing.get_origin(tp) is dict:  # model_kwargs.<anything>
                return
            raise ConfigError(f"config key {prefix + part!r} has no sub-keys (got {'.'.join(parts)!r})")


def check_keys(data: Any, where: str, schema: type, prefix: str = "") -> None:
    """Unknown keys of a raw config mapping, section by section, without copying or
    expanding any value (so a typo is reported before anything is built from the file)."""
    if not isinstance(data, dict):
        return
    hints = typing.get_type_hints(schema)
    for key, value in data.items():
        if key not in hints:
            exc = _unknown_key(str(key), schema, prefix)
            raise ConfigError(f"{where}: {exc.message}") from None
        if dataclasses.is_dataclass(hints[key]):
            check_keys(value, where, hints[key], prefix + f"{key}.")


def _deep_copy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deep_copy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deep_copy(v) for v in d]
    return d
