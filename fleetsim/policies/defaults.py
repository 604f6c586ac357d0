"""Model defaults a method brings with it (docs/policies.md, "Defaults of each method").

A method's authors train with particular model settings: HeteroFL divides kept
activations by the width in training and recomputes the full model's batch-norm
statistics before each test (sBN), FjORD and Federated Dropout do not rescale, and so on.
A policy class declares these as :class:`ModelDefault` entries in ``model_defaults``;
:func:`resolve_model_defaults` applies each one the scenario did not set itself.

What the scenario sets explicitly always wins. A scenario that sets a different value is
allowed (an ablation such as "HeteroFL without sBN" is a legitimate experiment), and the
outcome is recorded as a ``departure``, so a run's provenance says which settings were the
method's and which the user's. Refusing it instead would make every such ablation need a
new policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

#: what became of one default in one scenario
Outcome = Literal["applied", "set by scenario", "departure", "not applicable"]


@dataclass(frozen=True)
class ModelDefault:
    """One model option a method sets unless the scenario does.

    Attributes
    ----------
    option : the key under ``model.options`` (``rescale``, ``bn_stats``)
    value : the method's value
    source : where the method does this (paper section, or authors' file and function)
    batch_norm_only : applies only to models with batch norm (``bn_stats``)
    """

    option: str
    value: Any
    source: str
    batch_norm_only: bool = False


@dataclass(frozen=True)
class DefaultRecord:
    """What one :class:`ModelDefault` came to in a scenario (for the run's provenance)."""

    option: str
    method_value: Any
    in_effect: Any  # the value the model is built with (None: not applicable)
    outcome: Outcome
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"option": self.option, "method_value": self.method_value,
                "in_effect": self.in_effect, "outcome": self.outcome, "source": self.source}


def has_batch_norm(options: BaseModel) -> bool:
    """Whether a model built with ``options`` has batch norm.

    A model with a ``bn_stats`` option has batch norm unless it also has a ``norm``
    option that is not ``bn`` (``cnn4``'s ``norm: none``).
    """
    fields = type(options).model_fields
    return "bn_stats" in fields and getattr(options, "norm", "bn") == "bn"


def resolve_model_defaults(defaults: Sequence[ModelDefault], options_cls: type[BaseModel],
                           given: Mapping[str, Any]
                           ) -> tuple[dict[str, Any], tuple[DefaultRecord, ...]]:
    """The model options with a method's defaults filled in, and what became of each.

    Parameters
    ----------
    defaults : the policy class's ``model_defaults``
    options_cls : the model's ``Options`` class (validates ``given``)
    given : ``model.options`` as the scenario gives them (only what the user wrote)

    Returns
    -------
    The options to build the model with (``given`` plus the defaults that apply), and one
    record per default: ``applied``; ``set by scenario`` (to the method's value);
    ``departure`` (to another value: the user's wins); ``not applicable`` (the model has
    no such option, or the default is for batch norm and the model has none).
    """
    fields = options_cls.model_fields
    user = options_cls(**given)
    merged = dict(given)
    records = []
    for d in defaults:
        if d.option not in fields or (d.batch_norm_only and not has_batch_norm(user)):
            records.append(DefaultRecord(d.option, d.value, None, "not applicable", d.source))
            continue
        if d.option in given:
            same = given[d.option] == d.value
            records.append(DefaultRecord(d.option, d.value, given[d.option],
                                         "set by scenario" if same else "departure",
                                         d.source))
            continue
        merged[d.option] = d.value
        records.append(DefaultRecord(d.option, d.value, d.value, "applied", d.source))
    options_cls(**merged)  # a method's default that the model rejects is a bug here
    return merged, tuple(records)
