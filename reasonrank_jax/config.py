"""Typed configs: frozen dataclasses, loaded from YAML and overridden on the command line.

A command's config is a frozen dataclass whose fields are options, declared with :func:`option`, or sections:
fields whose type is another config dataclass (``train.steps``). Values are taken, lowest precedence first, from

1. the field defaults,
2. ``--config FILE.yaml`` (a mapping; sections are nested mappings; ``max-passage-length`` and
   ``max_passage_length`` name the same key),
3. the command's ``--option value`` flags,
4. ``key=value`` / ``section.key=value`` arguments (the value is read as a YAML scalar: ``train.lr=1e-4``).

Every value, whatever its source, is converted and checked here, in one place: its type (an integer field takes
neither ``64.5`` nor ``true``; a boolean takes ``true/false/yes/no/on/off/1/0`` and nothing else), its range, its
choices, required options, either-or groups (:class:`OneOf`) and the config's own ``check()``. A violation is an
:class:`InputError` naming where the value came from: ``file.yaml [window]``, ``[--window]`` or ``[window=0]``.

This module imports no jax, so ``--help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import types
import typing
from typing import Any

from reasonrank_jax.errors import InputError

_MISSING = dataclasses.MISSING
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NUMBERS = {int: ("an integer", (int,)), float: ("a finite number", (int, float))}


def option(default: Any = None, *, help: str = "", choices: tuple | None = None, min: float | None = None,
           max: float | None = None, required: bool = False, positional: bool = False,
           metavar: str | None = None, flag: bool = True, short: str | None = None, rest: bool = False) -> Any:
    """A config option. ``required``: there is no default and it must be given somewhere; ``positional``: a
    positional command-line argument (a tuple field takes several); ``flag=False``: settable only from the
    YAML file and ``key=value`` (for sections of training configs); ``short``: a one-letter alias (``-n``);
    ``rest``: a tuple field taking every argument after ``--`` (a command to run, untouched)."""
    meta = {"help": help, "choices": choices, "min": min, "max": max, "required": required,
            "positional": positional, "metavar": metavar, "flag": flag, "short": short, "rest": rest}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple for a list default: config dataclasses are frozen")
    return dataclasses.field(default=default, metadata=meta)


def section(cls: type) -> Any:
    """A section of a config: a field holding another config dataclass (``train.steps``)."""
    return dataclasses.field(default_factory=cls)


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Either-or options: at most one may be set, and with ``required`` exactly one."""

    names: tuple[str, ...]
    required: bool = True


class Source(typing.NamedTuple):
    """Where a value came from, for error messages."""

    path: str | None  # the YAML file, or None for the command line
    label: str        # the key as written: 'max-passage-length', '--window', 'window=0'

    def error(self, message: str) -> InputError:
        return InputError(message, path=self.path, field=self.label)


_DEFAULT = Source(None, "default")


# --- describing a config class ------------------------------------------------------------------------------

def is_config(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def fields_of(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """Field name -> (field, resolved type annotation)."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


def key_name(name: str) -> str:
    """The canonical spelling of a key: underscores (hyphens are accepted as the same key)."""
    return name.replace("-", "_")


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# --- converting and checking values -------------------------------------------------------------------------

def _convert_scalar(value: Any, tp: type, source: Source) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (str, int)) and str(value).strip().lower() in _TRUE | _FALSE:
            return str(value).strip().lower() in _TRUE
        raise source.error(f"expected true or false, got {value!r}")
    if tp in _NUMBERS:
        what, accepted = _NUMBERS[tp]
        if not isinstance(value, bool):  # bool is an int subclass, and never meant as a number here
            if isinstance(value, accepted):
                number = tp(value)
            else:
                try:
                    number = tp(value.strip()) if isinstance(value, str) else None
                except ValueError:
                    number = None
            if number is not None and math.isfinite(number):
                return number
        raise source.error(f"expected {what}, got {value!r}")
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise source.error(f"expected a string, got {value!r}")
        return str(value)
    raise TypeError(f"unsupported option type {tp!r}")


def convert_value(value: Any, tp: Any, source: Source) -> Any:
    """``value`` as type ``tp`` (int, float, str, bool, tuple[X, ...], or Optional of those)."""
    tp, optional = unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise source.error("a value is required (null given)")
    if typing.get_origin(tp) is tuple:
        item_type = typing.get_args(tp)[0]
        items = value if isinstance(value, (list, tuple)) else [value]  # a lone value is a list of one
        return tuple(_convert_scalar(item, item_type, source) for item in items)
    return _convert_scalar(value, tp, source)


def _check_bounds(value: Any, meta: dict, source: Source) -> None:
    for item in (value if isinstance(value, tuple) else (value,)):
        if item is None:
            continue
        if meta["choices"] is not None and item not in meta["choices"]:
            raise source.error(f"expected one of {', '.join(map(str, meta['choices']))}; got {item!r}")
        if meta["min"] is not None and item < meta["min"]:
            raise source.error(f"must be >= {meta['min']:g}, got {item!r}")
        if meta["max"] is not None and item > meta["max"]:
            raise source.error(f"must be <= {meta['max']:g}, got {item!r}")


# --- building a config from layered values --------------------------------------------------------------------

class Values:
    """Raw values by dotted key, each with its source; later layers replace earlier ones."""

    def __init__(self, cls: type):
        self.cls = cls
        self.raw: dict[str, tuple[Any, Source]] = {}

    def lookup(self, key: str, source: Source) -> tuple[str, Any]:
        """'train.max-length' -> ('train.max_length', its type); the type of a section is its config class."""
        cls, parts = self.cls, key_name(key).split(".")
        for i, part in enumerate(parts):
            known = fields_of(cls)
            if part not in known:
                section = ".".join(parts[:i])
                where = f" in section '{section}'" if section else ""
                raise source.error(f"unknown setting{where}; known: {', '.join(sorted(known))}")
            _, tp = known[part]
            if i < len(parts) - 1:
                if not is_config(tp):
                    raise source.error(f"'{part}' is not a section")
                cls = tp
        return ".".join(parts), tp

    def set(self, key: str, value: Any, source: Source) -> None:
        dotted, tp = self.lookup(key, source)
        if is_config(tp):
            raise source.error(f"'{key}' is a section: give its keys ({key}.KEY)")
        self.raw[dotted] = (value, source)

    def set_mapping(self, mapping: dict, path: str, prefix: str = "") -> None:
        """A YAML mapping: nested mappings are sections."""
        for key, value in mapping.items():
            if not isinstance(key, str):
                raise InputError(f"keys must be strings, got {key!r}", path=path, field=f"{prefix}{key}")
            dotted = prefix + key
            source = Source(path, dotted)
            _, tp = self.lookup(dotted, source)
            if is_config(tp):
                if not isinstance(value, dict):
                    raise source.error(f"'{dotted}' is a section: expected a mapping of its keys")
                self.set_mapping(value, path, dotted + ".")
            else:
                self.set(dotted, value, source)

    def build(self, config_path: str | None = None):
        return _build(self.cls, self.raw, "", config_path)


def _build(cls: type, raw: dict, prefix: str, config_path: str | None):
    kwargs, sources = {}, {}
    for name, (field, tp) in fields_of(cls).items():
        dotted = prefix + name
        if is_config(tp):
            kwargs[name] = _build(tp, raw, dotted + ".", config_path)
            continue
        meta = field.metadata
        value, source = raw.get(dotted, (field.default, _DEFAULT))
        if source is _DEFAULT:
            if meta.get("required") and value in (None, ()):
                continue  # reported below, with every way of giving it
        else:
            value = convert_value(value, tp, source)
            _check_bounds(value, meta, source)
        kwargs[name], sources[name] = value, source
    for name, (field, tp) in fields_of(cls).items():
        if field.metadata.get("required") and kwargs.get(name) in (None, ()) and not is_config(tp):
            raise InputError(f"missing required option {_ways_to_give(prefix + name, field, cls)}",
                             path=config_path)
    for group in getattr(cls, "ONE_OF", ()):
        given = [n for n in group.names if kwargs.get(n) not in (None, ())]
        if len(given) > 1:
            raise sources[given[1]].error(
                f"give only one of {', '.join(flag_name(n) for n in group.names)} "
                f"({prefix + given[0]} and {prefix + given[1]} are both set)")
        if group.required and not given:
            raise InputError(f"give one of {', '.join(_ways_to_give(prefix + n, fields_of(cls)[n][0], cls) for n in group.names)}",
                             path=config_path)
    config = cls(**kwargs)
    check = getattr(config, "check", None)
    if check is not None:
        try:
            check()
        except ConfigCheckError as err:
            source = sources.get(err.key, Source(config_path, prefix + err.key))
            raise source.error(str(err)) from None
    return config


def _ways_to_give(dotted: str, field: dataclasses.Field, cls: type | None = None) -> str:
    name = dotted.rsplit(".", 1)[-1]
    if getattr(cls, "TRAINING_CONFIG", False):  # its --config is a training YAML, not its own settings
        return flag_name(name)
    if field.metadata.get("positional"):
        return f"{field.metadata.get('metavar') or name.upper()} (or '{dotted}:' in --config)"
    if field.metadata.get("flag", True) and "." not in dotted:
        return f"{flag_name(name)} (or '{dotted}:' in --config)"
    return f"{dotted} (in --config or as {dotted}=VALUE)"


class ConfigCheckError(ValueError):
    """Raised by a config's ``check()``: ``key`` is the field the message is about."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


# --- YAML in and out ----------------------------------------------------------------------------------------

def read_yaml_mapping(path: str) -> dict:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except IsADirectoryError:
        raise InputError("is a directory, expected a YAML file", path=path) from None
    except OSError as err:
        raise InputError(f"cannot read config: {err.strerror}", path=path) from None
    except UnicodeDecodeError as err:
        raise InputError(f"not UTF-8 text ({err.reason})", path=path) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise InputError(f"not valid YAML: {getattr(err, 'problem', None) or str(err).splitlines()[0]}",
                         path=path, line=line) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError("expected a mapping of option names to values", path=path)
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """'train.steps=5' -> ('train.steps', 5): the value is read as a YAML scalar ('no' is false); a structure or a
    date stays the string written. Converting it to the field's type is the config's job."""
    import yaml

    key, _, value = text.partition("=")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    if isinstance(parsed, (dict, list, datetime.date)):
        parsed = value  # keep a string that YAML would read as a structure or a date as written
    return key.strip(), parsed


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def to_yaml(config, command: str) -> str:
    """The resolved config, with a header naming the command and the time; loadable with --config."""
    import yaml

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    body = yaml.safe_dump(plain(to_dict(config)), sort_keys=False, allow_unicode=True)
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{HEADER_PREFIX}{command}: resolved config, written {when}\n{body}"


HEADER_PREFIX = "# reasonrank-jax "


def written_by(text: str) -> str | None:
    """The command named by a resolved config's header, or None for any other text."""
    first = text.split("\n", 1)[0]
    if not first.startswith(HEADER_PREFIX) or ": resolved config" not in first:
        return None
    return first[len(HEADER_PREFIX):].split(": resolved config", 1)[0]

