"""The base of every config section: unknown keys are errors that list the allowed ones."""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A config section: unknown keys are errors (pydantic's extra="forbid", so every one of them
    is reported together with the other errors); `unknown_key` words them with the allowed keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def unknown_key(section: type[BaseModel] | None, key: str) -> str:
    """'unknown key 'tpo_k' (did you mean 'top_k'?); allowed keys: ...' for a key of `section`."""
    if section is None:
        return f"unknown key {key!r}"
    allowed = set(section.model_fields)
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}"


def section_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config section (a pydantic model class) at an error location, through lists, optional
    values and tagged unions (pydantic puts the union's tag in the location)."""
    candidates: list[Any] = [root]
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: the members are already unwrapped
        models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        tagged = [m for m in models if _tag(m) == part]
        if tagged:
            candidates = tagged
            continue
        field = next((m.model_fields[part] for m in models if part in m.model_fields), None)
        if field is None:
            return None
        candidates = _members(field.annotation)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if len(models) == 1 else None


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    args = get_args(field.annotation) if field is not None else ()
    return args[0] if len(args) == 1 and isinstance(args[0], str) else None


def _members(annotation: Any) -> list[Any]:
    """The types a field can hold, with Annotated, Optional, unions and lists unwrapped."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _members(get_args(annotation)[0])
    if origin in (Union, UnionType, list, tuple, dict):
        return [m for a in get_args(annotation) for m in _members(a)]
    return [annotation]


Size = Annotated[int, Field(gt=0)]
