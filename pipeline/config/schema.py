"""How a key of params.yaml is declared: its type, default, range or choices and one-line meaning,
side by side, once (pydantic models, strict: an integer is never taken for a boolean, a string never
for a number). Relations between the keys of a section are the section's own `check`.

A rule that fails becomes one `AGDError` naming the file, the key, what is wrong and the fix:
`explain` turns pydantic's error records into that line, with the key's own `fix` where it gives
one.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from pipeline.run.errors import AGDError


class Invalid(Exception):
    """A relation between keys that does not hold (not a ValueError: pydantic lets it through)."""

    def __init__(self, key: str, problem: str, fix: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem, self.fix = key, problem, fix


def key(default: Any, meaning: str, *, fix: str = "", problem: str = "", **constraints) -> Any:
    """A key: its default (the embedded default's value), what it means, and its range (gt, ge, lt, le)
    or length (min_length). `fix` is what the error line tells a user to do; `problem` replaces the
    generic text for any error on this key ("{value}" is the value given)."""
    extra = {k: v for k, v in (("fix", fix), ("problem", problem)) if v}
    return Field(default, description=meaning, json_schema_extra=extra or None, **constraints)


# list items with a range
NonNegative = Annotated[float, Field(ge=0)]
PositiveInt = Annotated[int, Field(gt=0)]


class Section(BaseModel):
    """One section of params.yaml: one stage's settings (or those several stages share)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)
    name: ClassVar[str] = ""  # its key in params.yaml (set by pipeline.config, which lists the sections)

    def check(self) -> None:
        """Relations between this section's keys; raise Invalid (the key, the problem, the fix)."""

    @model_validator(mode="after")
    def _relations(self):
        self.check()
        return self

    def replace(self, **changes) -> "Section":
        """A copy with some keys changed, validated like the original (a broken rule: one AGDError)."""
        raw = {**self.model_dump(), **changes}
        try:
            return type(self).model_validate(raw)
        except ValidationError as err:
            raise explain(err.errors()[0], type(self), self.name, raw, "params") from None
        except Invalid as err:
            raise AGDError(f"params: {self.name}.{err.key}", err.problem, err.fix) from None


# --- error lines ---------------------------------------------------------------------------------

def bounds(field: FieldInfo | None) -> dict:
    found = {}
    for m in (field.metadata if field is not None else []):  # annotated-types' Gt(gt=0), Lt(lt=1), ...
        for name in ("gt", "ge", "lt", "le"):
            if type(m).__name__ == name.capitalize():
                found[name] = getattr(m, name)
    return found


def _range_problem(value, limits: dict, ctx: dict) -> tuple[str, str]:
    limits = limits or ctx
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits.get("gt"))
    high = ("]", limits["le"]) if "le" in limits else (")", limits.get("lt"))
    if high[1] is None:
        if low == ("(", 0):
            return f"must be positive, got {value}", "set a value above zero"
        if low == ("[", 0):
            return f"must not be negative, got {value}", "use 0 or more"
        return f"must be {'at least' if low[0] == '[' else 'above'} {low[1]}, got {value}", f"use {low[1]} or more"
    if low[1] is None:
        return f"must be {'at most' if high[0] == ']' else 'below'} {high[1]}, got {value}", f"use {high[1]} or less"
    span = f"{low[0]}{low[1]:g}, {high[1]:g}{high[0]}"
    return f"must be in {span}, got {value}", f"use a value in {span}"


TYPE_PROBLEMS = {  # pydantic error type -> (problem, fix)
    "int_type": ("expected an integer, got {value!r}", "write a whole number"),
    "float_type": ("expected a number, got {value!r}", "write a number such as 1e-4"),
    "bool_type": ("expected true or false, got {value!r}", "write true or false"),
    "string_type": ("expected a string, got {value!r}", "quote the value"),
    "list_type": ("expected a non-empty list, got {value!r}", "write a YAML list, e.g. [3.0, 6.0]"),
    "too_short": ("expected a non-empty list, got {value!r}", "write a YAML list, e.g. [3.0, 6.0]"),
}


def explain(error: dict, section: type[Section], name: str, raw: dict, file: str) -> AGDError:
    """One pydantic error record of section `name` as the user's error line."""
    loc = error["loc"]
    field = section.model_fields.get(str(loc[0])) if loc else None
    where = f"{file}: {name}" + (f".{loc[0]}" if loc else "")
    extra = (field.json_schema_extra or {}) if field is not None else {}
    kind, value = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return AGDError(where, "unknown key", f"remove it or use one of {', '.join(sorted(section.model_fields))}")
    if kind in TYPE_PROBLEMS and not (kind == "too_short" and "problem" in extra):
        problem, fix = TYPE_PROBLEMS[kind]
        return AGDError(where + "".join(f"[{i}]" for i in loc[1:]), problem.format(value=value), fix)
    if "problem" in extra:  # the key says what a value of the right type but out of its rules is
        return AGDError(where, extra["problem"].format(value=raw.get(loc[0])), extra.get("fix", "see `agd keys`"))
    where += "".join(f"[{i}]" for i in loc[1:])
    if kind == "literal_error":
        choices = error.get("ctx", {}).get("expected", "")
        return AGDError(where, f"unknown value {value!r}", extra.get("fix") or f"use one of {choices}".replace("'", ""))
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        limits = bounds(field) if len(loc) == 1 else {}
        problem, fix = _range_problem(value, limits, error.get("ctx", {}))
        return AGDError(where, problem, extra.get("fix") or fix)
    return AGDError(where, error["msg"], extra.get("fix") or "see `agd keys` for what the key takes")
