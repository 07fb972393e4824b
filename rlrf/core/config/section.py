"""The base of every config section, and the error of a key that rlrf hands to a library's config
class (`*.trainer_args` to trl, `lora` to peft) but that class has no field for."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


@functools.cache
def dataclass_fields(path: str) -> frozenset[str]:
    """The field names of a library's config dataclass, `"module:Class"` (imported on first use: trl
    takes seconds to import, so only a key that needs checking pays for it)."""
    module, _, name = path.partition(":")
    return frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(key: str, where: str, known) -> PydanticCustomError:
    """The error of a key that is not a field of a library's config class; the load error names it."""
    return PydanticCustomError("unknown_library_field", "unknown key '{key}' ({why})",
                               {"key": key, "why": f"not a field of {where}{did_you_mean(key, known)}"})


class Section(BaseModel):
    """A config section: unknown keys are errors; each field's docstring is its description, which
    `rlrf config show --explain` prints beside its value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)
