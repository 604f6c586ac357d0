"""Build the update pipeline of a scenario, and refuse the combinations it cannot run.

Part of the build layer (:mod:`fleetsim.build` calls it): it knows the whole scenario,
checks how the aggregator, the transforms, the noise and the attacks combine with the
policy and the server's mode, and hands the engine an
:class:`~fleetsim.pipeline.UpdatePipeline` of built components. Every refusal is one
paragraph naming the file, the key path and what is allowed (docs/policies.md lists them).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fleetsim.attacks import ATTACKS, Attack
from fleetsim.config import Scenario
from fleetsim.errors import UserError
from fleetsim.pipeline import UpdatePipeline
from fleetsim.server.privacy import NOISES
from fleetsim.server.robust import RULES, MultiKrum
from fleetsim.transforms import TRANSFORMS, Chain

#: policies whose devices upload the whole model, so that a compressed upload's size is
#: known before training (the same set as fleetsim.build.FIXED_WORK)
FULL_MODEL = frozenset({"fedavg", "fedprox", "fednova"})


def _err(source: str, key: str, problem: str, allowed: str) -> UserError:
    return UserError(f"{source}: at '{key}': {problem}. Allowed: {allowed}.")


def pipeline_components(sc: Scenario) -> list[tuple[str, str, dict[str, Any], str, str]]:
    """(kind, name, options, name key, options key) of every pipeline component of ``sc``,
    for :func:`fleetsim.build.validate_components`."""
    out = [("aggregator", sc.server.aggregator.name, sc.server.aggregator.options,
            "server.aggregator.name", "server.aggregator.options")]
    if sc.server.noise is not None:
        out.append(("noise", sc.server.noise.name, sc.server.noise.options,
                    "server.noise.name", "server.noise.options"))
    for i, t in enumerate(sc.training.update_transforms):
        out.append(("update transform", t.name, t.options,
                    f"training.update_transforms[{i}].name",
                    f"training.update_transforms[{i}].options"))
    for i, c in enumerate(sc.fleet.classes):
        if c.attack is not None:
            out.append(("attack", c.attack.name, c.attack.options,
                        f"fleet.classes[{i}].attack.name", f"fleet.classes[{i}].attack.options"))
    return out


def check_pipeline(sc: Scenario, source: str) -> None:
    """Refuse the combinations that are not defined (names and options already checked)."""
    srv, tr = sc.server, sc.training
    rule = RULES.get(srv.aggregator.name)(rule_options(sc))
    n = srv.buffer_size if srv.mode == "async" else tr.clients_per_round
    if isinstance(rule, MultiKrum) and n < rule.needs():
        f, m = rule.options.f, rule._m()  # type: ignore[attr-defined]
        what = "server.buffer_size" if srv.mode == "async" else "training.clients_per_round"
        raise _err(source, "server.aggregator.options.f",
                   f"{srv.aggregator.name} with f = {f} and m = {m} needs n > 2f + 2 = "
                   f"{2 * f + 2} and n >= m + f = {m + f} updates per aggregation, and "
                   f"{what} is {n} (Blanchard et al.'s condition)",
                   f"f <= {max((n - 3) // 2, 0)} and m <= n - f, or a larger {what}")
    names = [t.name for t in tr.update_transforms]
    for i, t in enumerate(tr.update_transforms):
        if TRANSFORMS.get(t.name).compresses and sc.policy.name not in FULL_MODEL:
            raise _err(source, f"training.update_transforms[{i}].name",
                       f"{t.name} compresses the upload, whose size the engine fixes before "
                       f"training from the sub-model's size, while policy "
                       f"'{sc.policy.name}' trains sub-networks whose elements are known only "
                       "after training, so the bytes sent and the elements compressed could "
                       "disagree", f"{t.name} with a full-model policy "
                       f"({', '.join(sorted(FULL_MODEL))}), or clip")
    if srv.noise is not None:
        if "clip" not in names:
            raise _err(source, "server.noise", "DP-FedAvg's noise is calibrated to the bound "
                       "every update is clipped to, and training.update_transforms has no "
                       "clip", "a {name: clip, options: {max_norm: S}} in "
                       "training.update_transforms, or server.noise: null")
        if names[-1] != "clip":
            raise _err(source, "training.update_transforms", "DP-FedAvg's noise is "
                       "calibrated to the clip bound, and a transform after clip "
                       f"({names[-1]}) can make an update longer than that bound (top-k's "
                       "residual, QSGD's rounding)", "clip as the last transform when "
                       "server.noise is set")
        if srv.mode != "sync":
            raise _err(source, "server.noise", "the privacy accountant needs rounds that "
                       "sample devices at a known rate, and async mode has none",
                       "server.mode: sync with server.noise, or server.noise: null")
        if srv.aggregator.name != "mean" or sc.policy.name == "fednova":
            raise _err(source, "server.noise", "DP-FedAvg's noise is calibrated to the "
                       "sensitivity of the weighted mean, and this run aggregates with "
                       f"'{srv.aggregator.name}' (policy '{sc.policy.name}')",
                       "server.aggregator.name: mean and a policy other than fednova, or "
                       "server.noise: null")
    if sc.policy.name == "fednova" and srv.aggregator.name != "mean":
        raise _err(source, "server.aggregator.name", "policy 'fednova' aggregates by its own "
                   "rule (normalised averaging of changes divided by local steps), which a "
                   f"robust rule such as '{srv.aggregator.name}' would replace",
                   "server.aggregator.name: mean with fednova, or another policy")
    if tr.batched and any(c.attack is not None and c.attack.name == "label_flip"
                          for c in sc.fleet.classes):
        raise _err(source, "training.batched", "label_flip attackers train on flipped "
                   "labels, which the batched trainer does not do", "training.batched: "
                   "false with label_flip attacks")


def rule_options(sc: Scenario) -> Any:
    return RULES.get(sc.server.aggregator.name).Options(**sc.server.aggregator.options)


def label_flippers(sc: Scenario, class_of: np.ndarray) -> frozenset[int]:
    """Devices of classes whose attack is label flipping."""
    cls = [i for i, c in enumerate(sc.fleet.classes)
           if c.attack is not None and ATTACKS.get(c.attack.name).in_training]
    if not cls:
        return frozenset()
    return frozenset(int(d) for d in np.flatnonzero(np.isin(class_of, cls)))


def update_pipeline(sc: Scenario, class_of: np.ndarray) -> UpdatePipeline | None:
    """The pipeline of ``sc``; None when nothing is configured (the engine's default)."""
    srv, tr = sc.server, sc.training
    attacks_cfg = [c.attack for c in sc.fleet.classes]
    if (srv.aggregator.name == "mean" and srv.noise is None and not tr.update_transforms
            and all(a is None for a in attacks_cfg)):
        return None
    rule = None
    if srv.aggregator.name != "mean":
        rule = RULES.get(srv.aggregator.name)(rule_options(sc))
    transforms = [TRANSFORMS.get(t.name)(TRANSFORMS.get(t.name).Options(**t.options))
                  for t in tr.update_transforms]
    attacks: list[Attack | None] = [
        None if a is None else ATTACKS.get(a.name)(ATTACKS.get(a.name).Options(**a.options))
        for a in attacks_cfg]
    noise = clip = None
    if srv.noise is not None:
        ncls = NOISES.get(srv.noise.name)
        noise = ncls(ncls.Options(**srv.noise.options))
        clip = next(t.options.max_norm for t in transforms  # type: ignore[attr-defined]
                    if type(t).__name__ == "Clip")
    return UpdatePipeline(
        seed=sc.seed, rule=rule, chain=Chain(transforms, sc.seed), attacks=attacks,
        class_of=class_of, noise=noise, clip_norm=clip or 0.0,
        sample_rate=tr.clients_per_round / sc.fleet.devices,
        bytes_per_param=sc.costs.bytes_per_param)
