"""Locate the bundled `prompts/` and `configs/` folders.

A wheel carries them inside the package (`rlrf/prompts`, `rlrf/configs`); a source checkout or an
editable install keeps them at the repository root. Looking in both places lets the same code run
from either without copying files around.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # the rlrf package (this file is rlrf/core/resources.py)


def resource_dir(name: str) -> Path:
    for candidate in (_PACKAGE / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bundled folder '{name}' not found next to the rlrf package")


def prompts_dir() -> Path:
    return resource_dir("prompts")


def configs_dir() -> Path:
    return resource_dir("configs")


def bundled_configs() -> list[Path]:
    """The bundled configs, by name."""
    return sorted(configs_dir().glob("*.yaml"))


def bundled_config(name: str) -> Path | None:
    """A bundled config by its name, with or without `.yaml`."""
    for candidate in (configs_dir() / name, configs_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    return None
