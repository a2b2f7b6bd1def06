"""Configuration: one YAML file plus environment overrides, validated once into typed models.

Field names follow KubeEdge's (camelCase in YAML, e.g. ``modules.cloudHub.nodeLimit``), so an operator's
``cloudcore.yaml`` and ``edgecore.yaml`` habits carry over. Python code sees snake_case attributes.

Environment overrides use a per-binary prefix and ``__`` between path segments, matching the YAML keys:
``CLOUDCORE__MODULES__CLOUDHUB__NODELIMIT=500`` sets ``modules.cloudHub.nodeLimit``. Segment matching is
case-insensitive; values are parsed as YAML scalars, so ``true``, ``42`` and ``[a, b]`` keep their types.

No key is accepted that does nothing: every field works, and a KubeEdge key kubage does not support is refused
with the reason (``unsupported``), so a KubeEdge operator's file fails loudly rather than half-applies. Every
field has a one-line docstring; ``to_yaml`` prints it above the key (``--defaultconfig``, ``keadm join``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the reason."""


class ConfigModel(BaseModel):
    """Base for every config section: camelCase keys, unknown keys rejected, immutable once loaded."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        validate_default=True,
        use_attribute_docstrings=True,  # each field's docstring is its description, printed by to_yaml
    )


ModelT = TypeVar("ModelT", bound=BaseModel)


SettingsT = TypeVar("SettingsT")


def settings_from(settings: type[SettingsT], section: BaseModel, **given: Any) -> SettingsT:
    """A component's settings dataclass built from its config section: every field the section has under the
    same name is taken from it; ``given`` supplies the rest (and wins)."""
    assert dataclasses.is_dataclass(settings), settings
    known = type(section).model_fields
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(settings) if f.name in known}
    values.update(given)
    return settings(**values)


def must_be_true(why: str) -> Callable[[bool], bool]:
    """A field validator for a KubeEdge ``enable`` key of a part kubage always runs: false is refused."""

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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def _has_key(data: object, path: list[str]) -> bool:
    for segment in path:
        if not isinstance(data, dict) or segment not in data:
            return False
        data = data[segment]
    return True


def to_yaml(config: BaseModel) -> str:
    """``config`` as YAML, every key under the one-line description of its field as a comment."""
    lines: list[str] = []
    _emit(config, config.model_dump(by_alias=True, mode="json"), "", lines)
    return "\n".join(lines) + "\n"


def _emit(config: BaseModel, values: dict[str, Any], indent: str, lines: list[str]) -> None:
    for name, field in type(config).model_fields.items():
        key = field.alias or name
        if field.description:
            lines.extend(f"{indent}# {line}" for line in field.description.splitlines())
        child = getattr(config, name)
        if isinstance(child, BaseModel):
            lines.append(f"{indent}{key}:")
            _emit(child, values[key], indent + "  ", lines)
        else:
            dumped = yaml.safe_dump({key: values[key]}, default_flow_style=True, sort_keys=False, width=1 << 16)
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


def _apply_override(data: dict[str, Any], model: type[BaseModel], segments: list[str], raw: str, env_key: str) -> None:
    """Set one environment override into ``data``, resolving each segment to the model's YAML key."""
    node: dict[str, Any] = data
    current: type[BaseModel] | None = model
    for i, segment in enumerate(segments):
        key = _yaml_key(current, segment)
        if key is None:
            raise ConfigError(f"environment {env_key}: unknown key {segment!r}")
        last = i == len(segments) - 1
        if last:
            try:
                node[key] = yaml.safe_load(raw) if raw != "" else ""
            except yaml.YAMLError as exc:
                raise ConfigError(f"environment {env_key}: value is not a valid YAML scalar") from exc
            return
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"environment {env_key}: {key!r} is not a section")
        node = child
        current = _section_model(current, key)


def _yaml_key(model: type[BaseModel] | None, segment: str) -> str | None:
    if model is None:
        return None
    for name, field in model.model_fields.items():
        alias = field.alias or name
        if segment.lower() in (alias.lower(), name.lower()):
            return alias
    return None


def _section_model(model: type[BaseModel] | None, key: str) -> type[BaseModel] | None:
    if model is None:
        return None
    for name, field in model.model_fields.items():
        if key in (field.alias, name):
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                return annotation
    return None


def _describe(exc: ValidationError) -> str:
    """One line per problem: ``modules.cloudHub.port: Input should be a valid integer (got 'abc')``."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err["loc"]) or "<top level>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
            continue
        if err["type"] == "value_error":
            lines.append(f"{where}: {err['ctx']['error']}")
            continue
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {err['msg']}{shown}")
    return "; ".join(lines)
