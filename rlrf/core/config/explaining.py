"""Every key of a config with its value and meaning, as `rlrf config show --explain` prints them: rlrf's
own keys from their field docstrings, the keys handed to trl / peft from those libraries' field help."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from rlrf.core.config.alignment import LoraAdapterConfig, TrainerArgsSection
from rlrf.core.config.section import Section


def explain(section: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value, meaning) of every key of a config, in order. Entries of the mappings
    handed to trl / peft are explained by those libraries' own field help."""
    for name, field in type(section).model_fields.items():
        key, value = f"{prefix}{name}", getattr(section, name)
        if isinstance(value, Section):
            yield from explain(value, f"{key}.")
        elif name == "trainer_args" and isinstance(section, TrainerArgsSection):
            for arg, arg_value in value.items():
                yield f"{key}.{arg}", arg_value, _library_help(section.TRAINER_CLASSES, arg)
        else:
            yield key, _plain(value), " ".join((field.description or "").split())
    for name, value in (section.model_extra or {}).items() if isinstance(section, LoraAdapterConfig) else ():
        yield f"{prefix}{name}", value, _library_help(("peft:LoraConfig",), name)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _library_help(classes: tuple[str, ...], name: str) -> str:
    for path in classes:
        module, _, cls = path.partition(":")
        for field in dataclasses.fields(getattr(importlib.import_module(module), cls)):
            if field.name == name:
                text = " ".join(str(field.metadata.get("help", "")).replace("%%", "%").split())
                return f"{cls}: {text}" if text else f"a field of {cls}"
    return ""
