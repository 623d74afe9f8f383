"""The base of every config section: unknown keys are errors that list the allowed ones."""

from __future__ import annotations

import difflib
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    """A config section: unknown keys are errors that list the allowed ones."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            allowed = set(cls.model_fields)
            unknown = [k for k in data if k not in allowed]
            if unknown:
                key = str(unknown[0])
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown key {key!r}{hint}; allowed keys: {', '.join(sorted(allowed))}")
        return data


Size = Annotated[int, Field(gt=0)]
