"""Pick a setting per policy from a sweep, e.g. each method's learning rate (and its
batch-norm mode).

A sweep is a ``fleetsim compare`` folder whose runs vary one scenario key (``--set
training.optimizer.lr=0.02,0.05,0.1``) and evaluate on the validation split
(``--set eval.split=validation``), so the choice never looks at the test data. Each run is
scored by the mean of its last ``last`` evaluated accuracies (one evaluation is noisy); a
value's score is the mean over its runs (seeds and any other axes); the best value per
policy wins, ties going to the value that sorts first. The result is printed as the
``--policies`` argument of the study, so the chosen values are used, not retyped.

Several keys (``--key training.optimizer.lr --key model.options.bn_stats``) are chosen
jointly: a "value" is then the combination of the runs' values, and the best combination
wins. For a key under ``model.options`` that the method has a default for (batch norm:
``docs/policies.md``, "Defaults of each method"), the method's default is shown beside the
choice, so a choice that departs from it is visible as such.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import yaml

from fleetsim.batch import DONE_FILE, PolicySpec
from fleetsim.errors import UserError
from fleetsim.report import RunData, load_runs, natural_key


@dataclass(frozen=True)
class Choice:
    """The chosen value of the swept key for one policy.

    Attributes
    ----------
    policy : the policy's folder label, e.g. ``fedavg+stragglers=wait``
    spec : ``--policies`` text of the policy with the chosen value, e.g.
        ``fedavg:stragglers=wait;training.optimizer.lr=0.05``; None if the label cannot be
        turned back into a spec (its options were renamed for the file system)
    value : the chosen value (as the scenario holds it)
    score : its mean score
    scores : every value tried, as (value, mean score, runs), in value order
    """

    policy: str
    spec: str | None
    value: Any
    score: float
    scores: tuple[tuple[Any, float, int], ...]
    #: the chosen keys (one, or several chosen jointly: ``value`` is then a tuple)
    keys: tuple[str, ...] = ()
    #: per key under ``model.options`` with a method default: that default
    method_defaults: tuple[tuple[str, Any], ...] = ()


def run_score(run: RunData, last: int) -> float:
    """Mean of the run's last ``last`` evaluated accuracies; nan without evaluations."""
    acc = run.curve()[1]
    return float(np.mean(acc[-last:])) if acc.size else math.nan


def _scenario_of(out: Path, run: RunData) -> dict[str, Any]:
    h5 = out / run.scenario / run.policy / run.overrides / f"seed-{run.seed}" / DONE_FILE
    with h5py.File(h5, "r") as f:
        text = f.attrs["scenario_text"]
    doc = yaml.safe_load(text if isinstance(text, str) else text.decode())
    return doc if isinstance(doc, dict) else json.loads(text)


def _lookup(doc: dict[str, Any], key: str) -> Any:
    node: Any = doc
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            raise KeyError(key)
    return node


def _value_text(value: Any) -> str:
    """A value as ``--policies`` text: a plain word stays bare (``running``, so the folder
    label reads ``@bn_stats=running``), anything else is JSON (which YAML reads back)."""
    if isinstance(value, str) and value.isidentifier() and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _spec_of(label: str, key: str | Sequence[str], value: Any) -> str | None:
    """``fedavg+stragglers=wait`` -> ``fedavg:stragglers=wait;KEY=VALUE`` when that spec
    has exactly this label again (labels of renamed options do not round-trip). Several
    keys: ``value`` is the tuple of their values."""
    if "@" in label:  # already at a tuned setting: its scenario keys are not in the label
        return None
    keys = [key] if isinstance(key, str) else list(key)
    values = [value] if isinstance(key, str) else list(value)
    name, *opts = label.split("+")
    plain = [o for o in opts if "=" in o]
    if len(plain) != len(opts):
        return None
    text = name + ":" + ";".join([*plain, *(f"{k}={_value_text(v)}"
                                           for k, v in zip(keys, values))])
    try:
        spec = PolicySpec.parse(text)
        back = PolicySpec(spec.name, spec.options[:len(spec.options) - len(keys)]).label
    except UserError:
        return None
    return text if back == label else None


def _method_defaults_of(out: Path, run: RunData) -> dict[str, Any]:
    """``{model option: the method's value}`` from a run's provenance."""
    h5 = out / run.scenario / run.policy / run.overrides / f"seed-{run.seed}" / DONE_FILE
    with h5py.File(h5, "r") as f:
        raw = f.attrs.get("method_defaults", "[]")
    records = json.loads(raw if isinstance(raw, str) else raw.decode())
    return {f"model.options.{r['option']}": r["method_value"] for r in records
            if r.get("outcome") != "not applicable"}


def choose(out: Path, key: str | Sequence[str], last: int = 3, allow_test: bool = False
           ) -> list[Choice]:
    """The best value of ``key`` per policy in the sweep folder ``out``; with several
    keys, the best combination of their values.

    Raises
    ------
    UserError
        when ``out`` holds no complete runs, a run lacks a key, the keys take a single
        value (combination), or the runs were evaluated on the test split (unless
        ``allow_test``)
    """
    keys = (key,) if isinstance(key, str) else tuple(key)
    if not keys or len(set(keys)) != len(keys):
        raise UserError(f"command line: at '--key': {list(keys)}: Allowed: one or more "
                        "different scenario keys the sweep varied.")
    if last < 1:
        raise UserError(f"command line: at '--last': {last} is not allowed. Allowed: an "
                        "integer >= 1 (evaluations averaged per run).")
    runs = load_runs(out)
    per: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    values: dict[str, Any] = {}
    defaults: dict[str, dict[str, Any]] = {}
    for run in runs:
        doc = _scenario_of(out, run)
        where = f"{out}/{run.scenario}/{run.policy}/{run.overrides}/seed-{run.seed}"
        try:
            found = tuple(_lookup(doc, k) for k in keys)
        except KeyError as exc:
            raise UserError(f"{where}: the run's scenario has no key '{exc.args[0]}'. "
                            "Allowed: a scenario key the sweep varied, e.g. "
                            "training.optimizer.lr.") from None
        value = found[0] if len(keys) == 1 else found
        if run.policy not in defaults:
            defaults[run.policy] = _method_defaults_of(out, run)
        split = (doc.get("eval") or {}).get("split", "test")
        if split != "validation" and not allow_test:
            raise UserError(f"{where}: the run evaluated on the '{split}' split, so choosing "
                            f"by it would tune on the data the study reports. Allowed: a "
                            "sweep run with --set eval.split=validation (or --allow-test to "
                            "choose on it anyway).")
        text = json.dumps(value, sort_keys=True)
        values[text] = value
        per[run.policy][text].append(run_score(run, last))
    if len(values) < 2:
        shown = ", ".join(keys)
        raise UserError(f"{out}: every run has {shown}={next(iter(values))}. Allowed: a "
                        f"sweep whose runs take at least two values of '{shown}' (compare "
                        f"--set {keys[0]}=V1,V2,...).")
    choices = []
    for policy in sorted(per, key=natural_key):
        tried = sorted(per[policy], key=natural_key)
        scores = tuple((values[t], _mean(per[policy][t]), len(per[policy][t])) for t in tried)
        # the highest score; nan (no evaluation) never wins; ties: the first in value order
        best = max(range(len(scores)), key=lambda i: (_rank(scores[i][1]), -i))
        value, score, _ = scores[best]
        spec = _spec_of(policy, keys[0] if len(keys) == 1 else keys, value)
        md = tuple((k, defaults[policy][k]) for k in keys if k in defaults[policy])
        choices.append(Choice(policy, spec, value, score, scores, keys, md))
    return choices


def _mean(xs: Sequence[float]) -> float:
    ok = [x for x in xs if math.isfinite(x)]
    return float(np.mean(ok)) if len(ok) == len(xs) and ok else math.nan


def _rank(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def choice_csv(choices: Sequence[Choice], key: str | Sequence[str]) -> str:
    """One row per policy and tried value (combination); ``chosen`` is 1 on the winner.
    With a key the method has a default for, ``method_default`` names it."""
    keys = [key] if isinstance(key, str) else list(key)
    with_defaults = any(c.method_defaults for c in choices)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["policy", *keys, "score", "runs", "chosen"]
               + (["method_default"] if with_defaults else []))
    for c in choices:
        md = "; ".join(f"{k}={json.dumps(v)}" for k, v in c.method_defaults)
        for value, score, n in c.scores:
            vals = [value] if len(keys) == 1 else list(value)
            w.writerow([c.policy, *(json.dumps(v) for v in vals), f"{score:.6g}", n,
                        int(json.dumps(value) == json.dumps(c.value))]
                       + ([md] if with_defaults else []))
    return buf.getvalue()


def policies_arg(choices: Sequence[Choice]) -> str | None:
    """The ``--policies`` argument running every policy at its chosen value; None when a
    label cannot be turned back into a spec."""
    specs = [c.spec for c in choices]
    return None if any(s is None for s in specs) else ",".join(s for s in specs if s)
