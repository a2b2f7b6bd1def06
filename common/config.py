"""Configuration: one YAML file plus environment overrides, validated once into typed models.

Field names follow KubeEdge's (camelCase in YAML, e.g. ``modules.cloudHub.nodeLimit``), so an operator's
``cloudcore.yaml`` and ``edgecore.yaml`` habits carry over. Python code sees snake_case attributes.

Environment overrides use a per-binary prefix and ``__`` between path segments, matching the YAML keys:
``CLOUDCORE__MODULES__CLOUDHUB__NODELIMIT=500`` sets ``modules.cloudHub.nodeLimit``. Segment matching is
case-insensitive; values are parsed as YAML scalars, so ``true``, ``42`` and ``[a, b]`` keep their types.

No key is accepted that does nothing: every field works, and a KubeEdge key kubage does not support is refused
with the reason (``unsupported``), so a KubeEdge operator's file fails loudly rather than half-applies. Every
field has a one-line docstring; ``to_yaml`` prints it above the key (``--defaultconfig``, ``keadm join``).

Sections are frozen dataclasses checked here rather than by a validation library: about a hundred keys of a
few plain types need no more, and pydantic was about 13 MiB of a gateway's EdgeCore. The checks and their
messages follow pydantic's lax mode (``"12"`` is an integer, ``yes`` a boolean; ``Input should be greater than
0``), which is what operators' files were written against.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, dataclass_transform

import yaml


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the reason."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rules:
    """What a field accepts beyond its type, and its YAML key when that is not the camelCase of its name."""

    alias: str | None = None
    gt: float | None = None
    ge: float | None = None
    le: float | None = None
    max_length: int | None = None
    check: Callable[[Any], Any] | None = None  # raises ValueError with the reason


_RULES = "kubage.config"  # the key of a field's Rules in its dataclass metadata


def Field(
    *,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    alias: str | None = None,
    gt: float | None = None,
    ge: float | None = None,
    le: float | None = None,
    max_length: int | None = None,
    check: Callable[[Any], Any] | None = None,
) -> Any:
    """A config field with bounds (``gt``, ``ge``, ``le``, ``max_length``), a YAML key of its own, or a check."""
    rules = Rules(alias=alias, gt=gt, ge=ge, le=le, max_length=max_length, check=check)
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_RULES: rules})


@dataclass_transform(kw_only_default=True, frozen_default=True, field_specifiers=(Field,))
class ConfigModel:
    """Base for every config section: a frozen dataclass with camelCase keys; unknown keys are refused."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        dataclasses.dataclass(frozen=True, kw_only=True)(cls)

    def check(self) -> None:
        """Rules across this section's fields, run once its fields are valid; raise ValueError to refuse."""


ModelT = TypeVar("ModelT", bound=ConfigModel)
SettingsT = TypeVar("SettingsT")


@dataclasses.dataclass(frozen=True, slots=True)
class FieldInfo:
    """One key of a section, as the loader, ``--defaultconfig`` and the environment overrides see it."""

    name: str  # the Python attribute
    key: str  # the YAML key
    annotation: Any
    rules: Rules
    required: bool

    @property
    def section(self) -> type[ConfigModel] | None:
        """The section this key holds, if it holds one."""
        return self.annotation if _is_section(self.annotation) else None


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, ConfigModel)


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


def fields_of(model: type[ConfigModel]) -> tuple[FieldInfo, ...]:
    """The keys of a section, in the order they are declared."""
    known = _FIELDS.get(model)
    if known is not None:
        return known
    hints = typing.get_type_hints(model)
    found = []
    for f in dataclasses.fields(model):  # type: ignore[arg-type]
        rules = f.metadata.get(_RULES) or Rules()
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        found.append(FieldInfo(f.name, rules.alias or _camel(f.name), hints[f.name], rules, required))
    _FIELDS[model] = tuple(found)
    return _FIELDS[model]


_FIELDS: dict[type[ConfigModel], tuple[FieldInfo, ...]] = {}  # annotations are resolved once per section


def descriptions(model: type[ConfigModel]) -> dict[str, str]:
    """Each field's description: the docstring written under it in the class body (source is read on demand, so
    only ``--defaultconfig`` and ``keadm join`` pay for it)."""
    import ast  # noqa: PLC0415 - not needed to load a config
    import inspect  # noqa: PLC0415
    import textwrap  # noqa: PLC0415

    (node,) = ast.parse(textwrap.dedent(inspect.getsource(model))).body
    assert isinstance(node, ast.ClassDef), node
    found: dict[str, str] = {}
    for statement, following in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            found[statement.target.id] = inspect.cleandoc(following.value.value)
    return found


def settings_from(settings: type[SettingsT], section: ConfigModel, **given: Any) -> SettingsT:
    """A component's settings dataclass built from its config section: every field the section has under the
    same name is taken from it; ``given`` supplies the rest (and wins)."""
    assert dataclasses.is_dataclass(settings), settings
    known = {f.name for f in fields_of(type(section))}
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(settings) if f.name in known}
    values.update(given)
    return settings(**values)


def must_be_true(why: str) -> Callable[[bool], bool]:
    """The check of a KubeEdge ``enable`` key of a part kubage always runs: false is refused."""

    def check(value: bool) -> bool:
        if value is not True:
            raise ValueError(f"cannot be false: {why}")
        return value

    return check


def load_config(
    model: type[ModelT],
    path: Path | None,
    *,
    env_prefix: str,
    environ: Mapping[str, str] | None = None,
    unsupported: Mapping[str, str] | None = None,
) -> ModelT:
    """Read ``path`` (if given), apply environment overrides, validate, and return the model.

    A missing file is an error when a path is given; with no path, defaults plus environment are used.
    ``unsupported`` maps dotted YAML keys (KubeEdge's, say) to why kubage refuses them.
    """
    source = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = _read_yaml(path) if path is not None else {}
    for key, reason in (unsupported or {}).items():
        if _has_key(data, key.split(".")):
            why = f": {reason}" if reason else ""
            raise ConfigError(f"{source}: {key} is not supported by kubage{why}; remove it")
    environ = os.environ if environ is None else environ
    for key, raw in sorted(environ.items()):
        if key.upper().startswith(env_prefix.upper() + "__"):
            segments = key[len(env_prefix) + 2 :].split("__")
            _apply_override(data, model, segments, raw, key)
    problems: list[str] = []
    config = _section(model, data, (), problems)
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    assert isinstance(config, model)
    return config


# --- validation --------------------------------------------------------------------------------------------


_Path = tuple[str | int, ...]


class _Invalid(Exception):
    """One value refused: where, and why (with the value, as pydantic shows it)."""

    def __init__(self, path: _Path, reason: str, got: object = dataclasses.MISSING) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason if got is dataclasses.MISSING else reason + _got(got)


def _where(path: _Path) -> str:
    return ".".join(str(part) for part in path) or "<top level>"


def _got(value: object) -> str:
    return "" if isinstance(value, dict) else f" (got {value!r})"


def _section(model: type[ConfigModel], data: object, path: _Path, problems: list[str]) -> ConfigModel | None:
    """The section built from ``data``, or None with every problem found appended to ``problems``."""
    if not isinstance(data, dict):
        problems.append(
            f"{_where(path)}: Input should be a valid dictionary or instance of {model.__name__}{_got(data)}"
        )
        return None
    fields = fields_of(model)
    values: dict[str, Any] = {}
    before = len(problems)
    for info in fields:
        given = next((k for k in (info.key, info.name) if k in data), None)
        where = (*path, info.key)
        if info.section is not None:  # an absent section is its defaults, checked as a given one is
            values[info.name] = _section(info.section, data[given] if given else {}, where, problems)
        elif given is not None:
            try:
                values[info.name] = _field(info, data[given], where)
            except _Invalid as exc:
                problems.append(f"{_where(exc.path)}: {exc.reason}")
        elif info.required:
            problems.append(f"{_where(where)}: Field required")
    known = {f.key for f in fields} | {f.name for f in fields}
    problems.extend(f"{_where((*path, key))}: unknown key" for key in data if key not in known)
    if len(problems) > before:
        return None
    section: ConfigModel = typing.cast(Any, model)(**values)
    try:
        section.check()
    except ValueError as exc:
        problems.append(f"{_where(path)}: {exc}")
        return None
    return section


def _field(info: FieldInfo, raw: object, path: _Path) -> Any:
    value = _value(info.annotation, raw, path)
    rules = info.rules
    if value is not None:
        if rules.gt is not None and not value > rules.gt:
            raise _Invalid(path, f"Input should be greater than {rules.gt}", raw)
        if rules.ge is not None and not value >= rules.ge:
            raise _Invalid(path, f"Input should be greater than or equal to {rules.ge}", raw)
        if rules.le is not None and not value <= rules.le:
            raise _Invalid(path, f"Input should be less than or equal to {rules.le}", raw)
        if rules.max_length is not None and len(value) > rules.max_length:
            raise _Invalid(path, f"String should have at most {rules.max_length} characters", raw)
    if rules.check is not None:
        try:
            value = rules.check(value)
        except ValueError as exc:
            raise _Invalid(path, str(exc)) from None
    return value


def _value(annotation: Any, raw: object, path: _Path) -> Any:
    """``raw`` as the type ``annotation`` names: the plain types, ``X | None``, Literal, list[X], dict[K, V]."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        if raw is None and type(None) in args:
            return None
        (inner,) = (arg for arg in args if arg is not type(None))
        return _value(inner, raw, path)
    if origin is Literal:
        if any(raw == option and type(raw) is type(option) for option in args):
            return raw
        *most, last = (repr(option) for option in args)
        options = f"{', '.join(most)} or {last}" if most else last
        raise _Invalid(path, f"Input should be {options}", raw)
    if origin is list:
        if not isinstance(raw, list | tuple):
            raise _Invalid(path, "Input should be a valid list", raw)
        return [_value(args[0], item, (*path, i)) for i, item in enumerate(raw)]
    if origin is dict:
        if not isinstance(raw, dict):
            raise _Invalid(path, "Input should be a valid dictionary", raw)
        return {_value(args[0], k, (*path, k)): _value(args[1], v, (*path, k)) for k, v in raw.items()}
    return _SCALARS[annotation](raw, path)


def _bool(raw: object, path: _Path) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    unable = ", unable to interpret input" if isinstance(raw, str | int | float) else ""
    raise _Invalid(path, f"Input should be a valid boolean{unable}", raw)


_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


def _int(raw: object, path: _Path) -> int:
    if isinstance(raw, int):  # a bool too: True is 1, as in pydantic's lax mode
        return int(raw)
    if isinstance(raw, float):
        if raw.is_integer():
            return int(raw)
        raise _Invalid(path, "Input should be a valid integer, got a number with a fractional part", raw)
    if isinstance(raw, str):
        try:
            return int(raw)
        except ValueError:
            raise _Invalid(path, "Input should be a valid integer, unable to parse string as an integer", raw) from None
    raise _Invalid(path, "Input should be a valid integer", raw)


def _float(raw: object, path: _Path) -> float:
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            raise _Invalid(path, "Input should be a valid number, unable to parse string as a number", raw) from None
    raise _Invalid(path, "Input should be a valid number", raw)


def _str(raw: object, path: _Path) -> str:
    if isinstance(raw, str):
        return raw
    raise _Invalid(path, "Input should be a valid string", raw)


_SCALARS: dict[Any, Callable[[object, _Path], Any]] = {bool: _bool, int: _int, float: _float, str: _str}


def _has_key(data: object, path: list[str]) -> bool:
    for segment in path:
        if not isinstance(data, dict) or segment not in data:
            return False
        data = data[segment]
    return True


def to_yaml(config: ConfigModel) -> str:
    """``config`` as YAML, every key under the one-line description of its field as a comment."""
    lines: list[str] = []
    _emit(config, "", lines)
    return "\n".join(lines) + "\n"


def dump(config: ConfigModel) -> dict[str, Any]:
    """``config`` as the plain mapping its YAML file would hold, under the YAML keys."""
    out: dict[str, Any] = {}
    for info in fields_of(type(config)):
        value = getattr(config, info.name)
        out[info.key] = dump(value) if isinstance(value, ConfigModel) else _plain(value)
    return out


def _plain(value: object) -> object:
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _emit(config: ConfigModel, indent: str, lines: list[str]) -> None:
    described = descriptions(type(config))
    for info in fields_of(type(config)):
        if info.name in described:
            lines.extend(f"{indent}# {line}" for line in described[info.name].splitlines())
        child = getattr(config, info.name)
        if isinstance(child, ConfigModel):
            lines.append(f"{indent}{info.key}:")
            _emit(child, indent + "  ", lines)
        else:
            value = {info.key: _plain(child)}
            dumped = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1 << 16)
            lines.append(indent + dumped.strip().removeprefix("{").removesuffix("}"))


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror}") from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: not valid YAML{at}: {problem}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, not {type(loaded).__name__}")
    return loaded


def _apply_override(
    data: dict[str, Any], model: type[ConfigModel], segments: list[str], raw: str, env_key: str
) -> None:
    """Set one environment override into ``data``, resolving each segment to the model's YAML key."""
    node: dict[str, Any] = data
    current: type[ConfigModel] | None = model
    for i, segment in enumerate(segments):
        info = _field_named(current, segment)
        if info is None:
            raise ConfigError(f"environment {env_key}: unknown key {segment!r}")
        if i == len(segments) - 1:
            try:
                node[info.key] = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as exc:
                raise ConfigError(f"environment {env_key}: value is not a valid YAML scalar") from exc
            return
        child = node.setdefault(info.key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment {env_key}: {info.key!r} is not a section")
        node = child
        current = info.section


def _field_named(model: type[ConfigModel] | None, segment: str) -> FieldInfo | None:
    """The field an environment variable's segment names, by its YAML key or attribute, in any case."""
    if model is None:
        return None
    return next((f for f in fields_of(model) if segment.lower() in (f.key.lower(), f.name.lower())), None)
