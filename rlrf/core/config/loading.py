"""A config file read (YAML 1.2 numbers, dotted overrides laid over it, one-line errors naming the key
and its source) and written back so that it reads to the same values."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from rlrf.core.config.run import RunConfig
from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_text
from rlrf.core.resources import bundled_config


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; YAML 1.2 and every user read it as
    a number. Keys typed by pydantic coerce either way, but `trainer_args` go to trl untyped."""


class _Dumper(yaml.SafeDumper):
    """Quotes a string that `_Loader` would read back as a number."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
        list("-+0123456789."),
    )


def read_yaml(text: str) -> Any:
    """YAML as rlrf reads it everywhere (config files and `key=value` overrides): numbers as YAML 1.2."""
    return yaml.load(text, Loader=_Loader)


def write_yaml(data: Any) -> str:
    """YAML that `read_yaml` reads back to the same values."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or the name of a bundled config (`quickstart` or `quickstart.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = bundled_config(path.name)
    if bundled is not None:
        return bundled
    raise UserError(f"{name}: config file not found")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def _format_validation_error(err: ValidationError, source: str, overrides: dict) -> str:
    """One line naming the key, and the override that set it (else the file) as the source."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "unknown_library_field":
        key = ".".join(filter(None, (key, first["ctx"]["key"])))
    for dotted, value in overrides.items():
        if key and (key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + ".")):
            source = f"override {dotted}={_show(value)}"
            break
    if not key:  # a check across sections names its keys itself
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "unknown_library_field":
        return f"{source}: unknown key '{key}' ({first['ctx']['why']})"
    return f"{source}: key '{key}': {first['msg'].removeprefix('Value error, ')}"


def load_config(name: str | Path, overrides: dict | None = None) -> RunConfig:
    """The config file `name` (a path or a bundled name) with dotted `{key: value}` overrides laid over it."""
    path = resolve_config_path(name)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    overrides = overrides or {}
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {dotted}={_show(value)}: '{'.'.join(parents[: i + 1])}' is not a section")
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, str(path), overrides)) from None


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, write_yaml(cfg.model_dump(mode="json")))
