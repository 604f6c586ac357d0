"""Build every part of a run from a scenario, and run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fleetsim.backends import Backend, make_backend
from fleetsim.costs import CostModel
from fleetsim.engine import Engine, RunLog
from fleetsim.errors import UserError
from fleetsim.fleet import Fleet
from fleetsim.policies import POLICIES, PolicyContext
from fleetsim.rng import stream
from fleetsim.scenario import Scenario
from fleetsim.server.selection import SELECTORS, FleetView
from fleetsim.training import build_data


@dataclass
class Built:
    """The parts of a run, built from one scenario."""

    engine: Engine
    backend: Backend | None


def cost_model(sc: Scenario, model: Any) -> CostModel:
    overhead, block = 0.0, 1
    if sc.costs.calibration:
        from fleetsim.calibration import load_calibration, model_mismatch, profile_command

        cal = load_calibration(sc.costs.calibration)
        wrong = model_mismatch(cal, sc.model.arch, model.input_shape, model.num_classes)
        if wrong:
            raise UserError(
                f"at 'costs.calibration': the calibration '{sc.costs.calibration}' {wrong}; "
                f"its a and b hold only for the network it measured, and this scenario "
                f"trains {sc.model.arch} on samples of shape "
                f"{_shape(model.input_shape)} with {model.num_classes} classes. Allowed: a "
                f"calibration of this model: "
                f"`{profile_command(sc.model.arch, model.input_shape, model.num_classes)}`.")
        # A fitted intercept can come out slightly negative; a step never costs less than
        # its MACs, so clamp the fixed overhead at zero.
        overhead = max(cal.b_s, 0.0) / cal.a_s_per_mac
        block = cal.channel_block  # the fit's a and b hold for MACs counted this way
        wanted = sc.costs.channel_block
        if wanted is not None and wanted != block:
            raise UserError(
                f"at 'costs.channel_block': {wanted} is not allowed with costs.calibration "
                f"'{sc.costs.calibration}', whose fit counts kept channels in blocks of "
                f"{block} (its a and b hold only for MACs counted that way). Allowed: leave "
                f"costs.channel_block unset (or {block}), or calibrate for blocks of {wanted} "
                f"with `fleetsim profile --channel-block {wanted}`.")
    elif sc.costs.channel_block is not None:
        block = sc.costs.channel_block
    return CostModel(model, sc.costs.backward_factor, sc.costs.bytes_per_param, overhead,
                     block)


def _in_file(exc: UserError, source: str | None) -> UserError:
    """``exc`` with the scenario file in front, unless it names it already."""
    if source and not str(exc).startswith(source):
        return UserError(f"{source}: {exc}")
    return exc


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def class_mean_availability(fleet: Fleet, seed: int, per_class: int = 32) -> tuple[float, ...]:
    """Long-run mean availability of each class, from a sample of its devices' traces."""
    rng = stream(seed, "class-availability")
    out = []
    for k in range(len(fleet.classes)):
        members = np.flatnonzero(fleet.class_of == k)
        if len(members) == 0:
            out.append(1.0)
            continue
        sample = rng.choice(members, min(per_class, len(members)), replace=False)
        out.append(float(np.mean([fleet.trace(int(d)).mean_availability() for d in sample])))
    return tuple(out)


def build(sc: Scenario, source: str | None = None, progress: bool = False,
          on_round: Callable[[dict[str, Any]], None] | None = None) -> Built:
    """Fleet, data, model, cost model, policy, selector, backend and engine for ``sc``."""
    fleet = Fleet(sc.fleet, sc.seed, source)
    backend: Backend | None = None
    try:
        if sc.training.mode == "full":
            backend = make_backend(sc)
            model = backend.trainer.model
            n_samples = backend.trainer.partition.sizes()
        else:
            from fleetsim.nn import build_model

            ds, part = build_data(sc)
            model = build_model(sc.model.arch, ds.input_shape, ds.num_classes,
                                sc.model.options)
            n_samples = part.sizes()
        costs = cost_model(sc, model)
    except UserError as exc:  # the model does not fit the data, or the calibration
        if backend is not None:
            backend.close()
        raise _in_file(exc, source) from None
    pcls = POLICIES.get(sc.policy.name)
    options = dict(sc.policy.options)
    if "front" in pcls.Options.model_fields and options.get("front") is None:
        # DISTREAL-family policies: the front of this scenario's DSE settings (cached)
        from fleetsim.dse import front_for
        from fleetsim.paths import check_output_dir

        # the search writes its cache there: find out now, not after the search
        check_output_dir(sc.dse.cache_dir, "dse.cache_dir", source=source or "<scenario>")
        options["front"] = str(front_for(sc, progress=progress))
    ctx = PolicyContext(
        groups=tuple((g.name, g.channels) for g in model.groups),
        class_names=tuple(c.name for c in fleet.classes),
        class_peaks=tuple(c.peak_macs_per_s for c in fleet.classes),
        costs=costs, local_steps=sc.training.local_steps, batch_size=sc.training.batch_size,
        deadline_s=sc.training.deadline_s, seed=sc.seed,
        timing_only=sc.training.mode == "timing",
        class_mean_availability=class_mean_availability(fleet, sc.seed))
    try:
        policy = pcls(pcls.Options(**options), ctx)
    except UserError as exc:  # a policy's own check (front file, class names): add the file
        raise _in_file(exc, source) from None
    scls = SELECTORS.get(sc.selector.name)
    selector = scls(scls.Options(**sc.selector.options),
                    FleetView(fleet.n, fleet.class_of, np.asarray(n_samples)))
    engine = Engine(sc, fleet, costs, policy, selector, backend, np.asarray(n_samples),
                    progress=progress, on_round=on_round)
    return Built(engine, backend)


def run_scenario(sc: Scenario, source: str | None = None, progress: bool = False) -> RunLog:
    """Run ``sc`` to completion and return its log (nothing written)."""
    built = build(sc, source, progress)
    try:
        return built.engine.run()
    finally:
        if built.backend is not None:
            built.backend.close()
