"""How answers are generated, and the error a run that cannot be evaluated raises.

Plain data with no ML import: the GUI builds chat requests and reads saved reports with it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from qlora_studio.core.errors import StudioError

SIDES = ("base", "tuned")


class EvaluationError(StudioError):
    """A run or a held-out file that cannot be evaluated."""


@dataclass
class GenerationSettings:
    """How answers are generated. ``temperature`` 0 means greedy (the evaluation's choice)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> GenerationSettings:
        if not 1 <= self.max_new_tokens <= 8192:
            raise EvaluationError(
                f"max_new_tokens: {self.max_new_tokens} is out of range",
                "use a value between 1 and 8192",
            )
        if not 0.0 <= self.temperature <= 5.0:
            raise EvaluationError(
                f"temperature: {self.temperature} is out of range", "use 0 (greedy) to 5"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise EvaluationError(f"top_p: {self.top_p} is out of range", "use a value in (0, 1]")
        return self

    @classmethod
    def from_dict(cls, data: dict, defaults: GenerationSettings | None = None):
        """Settings from a request's plain dict over ``defaults``; raises EvaluationError naming
        an unknown or mistyped field."""
        base = defaults or cls()
        known = {f.name: type(getattr(base, f.name)) for f in fields(cls)}
        values = {name: getattr(base, name) for name in known}
        for name, value in data.items():
            if name not in known:
                raise EvaluationError(
                    f"settings: unknown field {name!r}", f"use {', '.join(known)}"
                )
            wanted = known[name]
            ok = isinstance(value, int) if wanted is int else isinstance(value, (int, float))
            if isinstance(value, bool) or not ok:
                raise EvaluationError(
                    f"settings.{name}: {value!r} is not a number",
                    f"{name} takes a {wanted.__name__}",
                )
            values[name] = wanted(value)
        return cls(**values).validate()
