"""Numbers in user input mean numbers: no booleans posing as 1 and 0, no NaN or infinity.

Pydantic's lax mode turns ``true`` into ``1`` for an ``int`` field and ``1.0`` for a
``float`` one, and accepts ``nan`` and ``inf`` (also as the strings that ``--set x=nan``
gives) for floats. Each is a user mistake that would run silently: ``--set
training.rounds=true`` ran one round. Strict mode is no cure: it also rejects a YAML list
for a tuple field and the string ``"1e7"``, which PyYAML makes of ``1e7`` (YAML 1.1 wants
``1.0e7``). So this module looks only for those two mistakes, from a field's annotation:

- :func:`find_loose_number` walks a raw value against an annotation (through unions,
  tuples, lists, dicts and nested models) and returns the first problem;
- :class:`StrictNumbers` is a pydantic base whose fields all get that check before their
  own validation, with pydantic's error types, so key paths and messages stay pydantic's.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError


@dataclass(frozen=True)
class NumberProblem:
    """A boolean or non-finite value where a number was expected.

    ``loc`` is the path below the checked value (empty: the value itself), ``kind`` is
    ``int`` or ``float``, ``finite`` is False for NaN or infinity (else it was a boolean).
    """

    loc: tuple[str | int, ...]
    value: Any
    kind: str
    finite: bool

    @property
    def message(self) -> str:
        if not self.finite:
            return "Input should be a finite number (not NaN or infinity)"
        noun = "an integer" if self.kind == "int" else "a number"
        return f"Input should be {noun}; true/false is not {noun} here"

    @property
    def allowed(self) -> str:
        if not self.finite:
            return "a finite number"
        return "an integer" if self.kind == "int" else "a number"


def _members(ann: Any) -> list[Any]:
    """The alternatives of an annotation: union members, Annotated and Optional unwrapped."""
    if get_origin(ann) is Annotated:
        return _members(get_args(ann)[0])
    if get_origin(ann) in (Union, types.UnionType):
        out: list[Any] = []
        for a in get_args(ann):
            out.extend(_members(a))
        return out
    return [ann]


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):  # pydantic parses 'nan', 'inf', '-Infinity' ... as floats
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def find_loose_number(ann: Any, value: Any, loc: tuple[str | int, ...] = (),
                      nested: bool = True) -> NumberProblem | None:
    """The first boolean or non-finite value in ``value`` where ``ann`` expects a number.

    Parameters
    ----------
    ann : the type annotation (or a pydantic model class)
    value : the raw input (from YAML or ``--set``), before validation
    loc : path of ``value``, prefixed to the problem's ``loc``
    nested : look into nested pydantic models (False where they check themselves)
    """
    members = _members(ann)
    if Any in members or value is None:
        return None
    scalars = {m for m in members if isinstance(m, type)}
    if isinstance(value, bool):
        if bool in scalars or any(get_origin(m) is Literal for m in members):
            return None
        for kind in (int, float):
            if kind in scalars:
                return NumberProblem(loc, value, kind.__name__, True)
        return None
    if float in scalars and str not in scalars and _not_finite(value):
        return NumberProblem(loc, value, "float", False)
    for m in members:
        origin, args = get_origin(m), get_args(m)
        if isinstance(value, list | tuple) and origin in (tuple, list, set, frozenset):
            for i, v in enumerate(value):
                if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
                    if i >= len(args):
                        break  # a length error, for pydantic to report
                    item = args[i]
                else:
                    item = args[0] if args else Any
                if (p := find_loose_number(item, v, (*loc, i), nested)) is not None:
                    return p
            return None
        if isinstance(value, dict) and origin is dict and len(args) == 2:
            for k, v in value.items():
                if (p := find_loose_number(args[1], v, (*loc, k), nested)) is not None:
                    return p
            return None
        if (isinstance(value, dict) and nested and isinstance(m, type)
                and issubclass(m, BaseModel)):
            fields = m.model_fields
            for k, v in value.items():
                f = fields.get(k) if isinstance(k, str) else None
                if f is not None and (p := find_loose_number(f.annotation, v, (*loc, k),
                                                             nested)) is not None:
                    return p
            return None
    return None


def loc_text(loc: tuple[str | int, ...]) -> str:
    """``('hidden', 0)`` -> ``'hidden[0]'``; ``('a', 'b')`` -> ``'a.b'``."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


class StrictNumbers(BaseModel):
    """A pydantic base that rejects booleans and NaN/infinity where a field wants a number.

    Nested models that derive from this check their own fields; other nested models are
    walked into.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        p = find_loose_number(field.annotation, value, nested=False)
        if p is None:
            return value
        where = f" (item {'.'.join(map(str, p.loc))}: {p.value!r})" if p.loc else ""
        if not p.finite:
            raise PydanticCustomError("finite_number", p.message + where)
        raise PydanticCustomError(f"{p.kind}_type", p.message + where)
