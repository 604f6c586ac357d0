"""Build: a scenario becomes the parts of a run.

This is the one layer that knows the whole :class:`~fleetsim.scenario.Scenario`: it
validates the named components where it builds them (names against their registries,
options against each component's own ``Options``), hands every part only its own settings
(:class:`~fleetsim.engine.EngineSettings`, :class:`~fleetsim.training.TrainerSettings`,
:class:`~fleetsim.backends.BackendSettings`, :class:`~fleetsim.dse.DSEJob`), and wires them
together. Everything below it takes settings, not scenarios; everything above it (the CLI,
the batch layer, the Python API) calls it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from fleetsim.attacks import ATTACKS
from fleetsim.backends import Backend, BackendSettings, make_backend
from fleetsim.build_pipeline import (
    check_pipeline,
    label_flippers,
    pipeline_components,
    update_pipeline,
)
from fleetsim.callbacks import Callback, ProgressBar
from fleetsim.costs import CostModel
from fleetsim.dse import DSEJob
from fleetsim.engine import Engine, EngineSettings, RunLog
from fleetsim.errors import UserError
from fleetsim.facts import RunFacts
from fleetsim.fleet import Fleet
from fleetsim.numbers import find_loose_number
from fleetsim.plugins import load_plugins
from fleetsim.policies import POLICIES, PolicyContext
from fleetsim.registry import Registry
from fleetsim.rng import stream
from fleetsim.scenario import Scenario, parse_overrides, read_scenario
from fleetsim.server.privacy import NOISES
from fleetsim.server.robust import RULES
from fleetsim.server.selection import SELECTORS, FleetView
from fleetsim.training import TrainerSettings, build_data_sizes
from fleetsim.transforms import TRANSFORMS

# ----------------------------------------------------------------------------- validation


def load_scenario(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), *,
                  text: str | None = None, source: str | None = None) -> Scenario:
    """Read, override and validate a scenario, its named components included.

    Parameters
    ----------
    path : the YAML file (or None with ``text``)
    overrides : ``key.path=value`` strings, as ``--set`` takes them
    text : YAML text instead of a file
    source : how messages name the scenario's origin (default: the path)

    Raises
    ------
    UserError : one paragraph naming the file, the key path and what is allowed
    """
    sc = read_scenario(path, overrides, text=text, source=source)
    source = source or (str(path) if path is not None else "<scenario text>")
    keys = list(parse_overrides(overrides))
    load_plugins(sc.plugins, source)
    _check_component_numbers(sc, source, keys)
    validate_components(sc, source, keys)
    check_pipeline(sc, source)
    out = with_method_defaults(sc)
    out._loaded = out.digest()
    return out


def with_method_defaults(sc: Scenario) -> Scenario:
    """``sc`` with its policy's model defaults filled into ``model.options``.

    Each default the scenario does not set itself applies (see
    :mod:`fleetsim.policies.defaults`); what the scenario sets wins. The records of what
    became of each default travel with the scenario (:func:`method_defaults`) into the
    run's provenance. Applied here, where the scenario is loaded, so that every part built
    from it (trainer, DSE, cost model, batch cells) sees the same model.
    """
    from fleetsim.nn import MODELS
    from fleetsim.policies.defaults import resolve_model_defaults

    pcls = POLICIES.get(sc.policy.name)
    mcls = MODELS.get(sc.model.arch)
    defaults = getattr(pcls, "model_defaults", ())
    opts_cls = getattr(mcls, "Options", None)
    if not defaults or opts_cls is None:
        return sc
    merged, records = resolve_model_defaults(defaults, opts_cls, sc.model.options)
    out = sc.model_copy(update={"model": sc.model.model_copy(update={"options": merged})})
    out._method_defaults = tuple(r.as_dict() for r in records)
    return out


def method_defaults(sc: Scenario) -> list[dict[str, Any]]:
    """What became of each of the policy's model defaults in ``sc`` (empty: none, or
    ``sc`` did not come from :func:`load_scenario`)."""
    return list(sc._method_defaults)


def registries() -> dict[str, Registry[Any]]:
    """All registries, imported here so every built-in component is registered."""
    import fleetsim.policies  # noqa: F401  (registers every built-in policy)
    from fleetsim.data import DATASETS, PARTITIONERS
    from fleetsim.network import TOPOLOGIES
    from fleetsim.nn import MODELS
    from fleetsim.policies import POLICIES
    from fleetsim.server.selection import SELECTORS
    from fleetsim.traces.bandwidth import BANDWIDTH_GENERATORS
    from fleetsim.traces.generators import GENERATORS

    return {"dataset": DATASETS, "partitioner": PARTITIONERS, "model": MODELS,
            "policy": POLICIES, "selector": SELECTORS, "trace generator": GENERATORS,
            "topology": TOPOLOGIES, "bandwidth generator": BANDWIDTH_GENERATORS,
            "aggregator": RULES, "update transform": TRANSFORMS, "noise": NOISES,
            "attack": ATTACKS}


def check_options(options_cls: type[BaseModel], raw: dict[str, Any], source: str,
                  key_path: str, what: str, overrides: Sequence[str] = ()) -> BaseModel:
    """Validate ``raw`` against ``options_cls``; errors name ``key_path.<option>``."""
    try:
        return options_cls(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{key_path}.{loc}" if loc else key_path
        where = source + (" (command-line --set)" if any(key.startswith(o) or
                                                          o.startswith(key) for o in overrides)
                          else "")
        fields = options_cls.model_fields
        if err["type"] == "extra_forbidden":
            listing = ", ".join(f"{n} (default {f.default!r})" for n, f in fields.items()) \
                or "no options"
            raise UserError(f"{where}: at '{key}': unknown option of {what}. Allowed: "
                            f"{listing}.") from None
        msg = err["msg"].removeprefix("Value error, ")
        f = fields.get(str(err["loc"][0])) if err["loc"] else None
        desc = f" ({f.description})" if f is not None and f.description else ""
        raise UserError(f"{where}: at '{key}': {err.get('input')!r} is not allowed ({msg}). "
                        f"Allowed: what {what} accepts for this option{desc}; see "
                        "`fleetsim schema`.") from None


def validate_components(sc: Any, source: str, overrides: Sequence[str] = ()) -> None:
    """Check names and options of every component of scenario ``sc``."""
    regs = registries()

    def one(kind: str, name: str, options: dict[str, Any], key: str, opt_key: str) -> None:
        cls = regs[kind].get(name, source=source, key_path=key)
        opts = getattr(cls, "Options", None)
        if opts is not None:
            check_options(opts, options, source, opt_key, f"{kind} '{name}'", overrides)

    one("dataset", sc.data.dataset, sc.data.options, "data.dataset", "data.options")
    one("partitioner", sc.data.partition.name, sc.data.partition.options,
        "data.partition.name", "data.partition.options")
    one("model", sc.model.arch, sc.model.options, "model.arch", "model.options")
    one("policy", sc.policy.name, sc.policy.options, "policy.name", "policy.options")
    one("selector", sc.selector.name, sc.selector.options, "selector.name", "selector.options")
    one("topology", sc.fleet.topology.kind, sc.fleet.topology.options, "fleet.topology.kind",
        "fleet.topology.options")
    traces = [("fleet.traces", sc.fleet.traces)] + [
        (f"fleet.classes[{i}].traces", c.traces) for i, c in enumerate(sc.fleet.classes)
        if c.traces is not None]
    for key, tc in traces:
        if tc.file is None:
            one("trace generator", tc.generator, tc.options, f"{key}.generator",
                f"{key}.options")
    for kind, name, options, key, opt_key in pipeline_components(sc):
        one(kind, name, options, key, opt_key)
    for key, g in _bandwidth_generators(sc):
        one("bandwidth generator", g.generator, g.options, f"{key}.generator",
            f"{key}.options")
    if sc.selector.name == "battery" and not any(
            c.energy is not None and c.energy.battery is not None for c in sc.fleet.classes):
        raise UserError(f"{source}: at 'selector.name': selector 'battery' skips devices "
                        "by their battery, and no class has one. Allowed: "
                        "fleet.classes[i].energy.battery on some class, or another "
                        "selector.")


def _bandwidth_generators(sc: Any) -> list[tuple[str, Any]]:
    """(key path, generator config) of every class's generated bandwidth."""
    out = []
    for i, c in enumerate(sc.fleet.classes):
        bw = c.bandwidth
        if bw is None or bw.file is not None:
            continue
        out += [(f"fleet.classes[{i}].bandwidth.{d}", g)
                for d, g in (("up", bw.up), ("down", bw.down)) if g is not None]
    return out


def _check_component_numbers(sc: Scenario, source: str, overrides: Sequence[str]) -> None:
    """Booleans and NaN/infinity where a component's option wants a number are errors.

    Components' ``Options`` are plain pydantic models (plugins' too), whose lax mode would
    take ``true`` as 1; their raw options are checked here against their annotations.
    Unknown names are left to :func:`validate_components`.
    """
    regs = registries()
    parts = [("dataset", sc.data.dataset, sc.data.options, "data.options"),
             ("partitioner", sc.data.partition.name, sc.data.partition.options,
              "data.partition.options"),
             ("model", sc.model.arch, sc.model.options, "model.options"),
             ("policy", sc.policy.name, sc.policy.options, "policy.options"),
             ("selector", sc.selector.name, sc.selector.options, "selector.options"),
             ("topology", sc.fleet.topology.kind, sc.fleet.topology.options,
              "fleet.topology.options")]
    traces = [("fleet.traces", sc.fleet.traces)] + [
        (f"fleet.classes[{i}].traces", c.traces) for i, c in enumerate(sc.fleet.classes)
        if c.traces is not None]
    parts += [("trace generator", tc.generator, tc.options, f"{key}.options")
              for key, tc in traces if tc.file is None and tc.generator is not None]
    parts += [("bandwidth generator", g.generator, g.options, f"{key}.options")
              for key, g in _bandwidth_generators(sc)]
    parts += [(kind, name, options, opt_key)
              for kind, name, options, _, opt_key in pipeline_components(sc)]
    for kind, name, options, key in parts:
        if name not in regs[kind]:
            continue
        opts = getattr(regs[kind].get(name), "Options", None)
        if not (isinstance(opts, type) and issubclass(opts, BaseModel)):
            continue
        p = find_loose_number(opts, dict(options))
        if p is None:
            continue
        path = key + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in p.loc)
        dotted = path.replace("[", ".").replace("]", "")  # as --set writes it
        via = any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".")
                  for o in overrides)
        where = f"{source} (command-line --set)" if via else source
        raise UserError(f"{where}: at '{path}': {p.value!r} is not allowed ({p.message}; "
                        f"option of {kind} '{name}'). Allowed: {p.allowed}.")


# ----------------------------------------------------------------------------- settings


def trackers(sc: Scenario, out_dir: str | os.PathLike[str]) -> list[Callback]:
    """The experiment trackers ``sc.output`` asks for, writing beside ``out_dir``."""
    if not sc.output.tensorboard:
        return []
    from fleetsim.callbacks import TensorBoard

    return [TensorBoard(sc.output.tensorboard_dir or Path(out_dir) / "tensorboard")]


def trainer_settings(sc: Scenario) -> TrainerSettings:
    """What real training needs of ``sc``."""
    tr = sc.training
    return TrainerSettings(seed=sc.seed, data=sc.data, n_devices=sc.fleet.devices,
                           model=sc.model, optimizer=tr.optimizer, batch_size=tr.batch_size,
                           eval_batch_size=sc.eval.batch_size, threads=tr.threads,
                           plugins=tuple(sc.plugins), device=tr.device,
                           eval_split=sc.eval.split)


def backend_settings(sc: Scenario) -> BackendSettings:
    tr = sc.training
    return BackendSettings(tr.backend, tr.workers, tr.ray_address, tr.batched)


def engine_settings(sc: Scenario) -> EngineSettings:
    """The server's rules of ``sc``."""
    tr = sc.training
    return EngineSettings(
        name=sc.name, seed=sc.seed, rounds=tr.rounds, time_budget_s=tr.time_budget_s,
        clients_per_round=tr.clients_per_round, deadline_s=tr.deadline_s,
        local_steps=tr.local_steps, batch_size=tr.batch_size, idle_wait_s=tr.idle_wait_s,
        server_time_s=tr.server_time_s, eval_every_rounds=sc.eval.every_rounds,
        policy_name=sc.policy.name, server=sc.server, local_epochs=tr.local_epochs)


def dse_job(sc: Scenario) -> DSEJob:
    return DSEJob(sc.dse, trainer_settings(sc), sc.costs.backward_factor, costs_digest(sc))


def front_used(sc: Scenario) -> str | None:
    """The front file that ``sc``'s policy reads: its ``policy.options.front``, else the
    cached front of the scenario's DSE settings (the one :func:`build` computes or finds);
    None for a policy that reads no front. For the run's provenance: which DSE result a
    DISTREAL-family run stood on."""
    pcls = POLICIES.get(sc.policy.name)
    if "front" not in getattr(getattr(pcls, "Options", None), "model_fields", {}):
        return None
    given = dict(sc.policy.options).get("front")
    if given is not None:
        return str(given)
    from fleetsim.dse import front_path

    return str(front_path(dse_job(sc)))


def costs_digest(sc: Scenario) -> str:
    """Digest of what times DSE candidates: the costs section and the calibration's bytes."""
    import contextlib
    import hashlib
    import json

    key: dict[str, Any] = {"costs": sc.costs.model_dump(mode="json")}
    if sc.costs.calibration:
        # a missing file is reported when the cost model reads it
        with contextlib.suppress(OSError):
            key["calibration"] = hashlib.sha256(
                Path(sc.costs.calibration).read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def run_dse(sc: Scenario, progress: bool = True) -> tuple[Any, dict[str, np.ndarray]]:
    """The design-space exploration of ``sc`` (see :func:`fleetsim.dse.run_dse`)."""
    from fleetsim.dse import run_dse as search

    return search(dse_job(sc), lambda model: cost_model(sc, model), progress)


def front_for(sc: Scenario, progress: bool = True) -> Path:
    """The cached front file of ``sc``'s DSE settings (searched once if missing)."""
    from fleetsim.dse import front_for as cached

    return cached(dse_job(sc), lambda model: cost_model(sc, model), progress)


#: policies that train the full model only: the ones a model without groups can run
FIXED_WORK = frozenset({"fedavg", "fedprox", "fednova"})


@dataclass
class Built:
    """The parts of a run, built from one scenario."""

    engine: Engine
    backend: Backend | None
    #: the fleet's classes and each device's sample count (for the results' per-class
    #: tables and guardrails)
    facts: RunFacts | None = None
    #: the full model the backend trains (None in timing-only mode): the final global
    #: state is loaded into a copy of it
    model: Any = None

    def final_model(self) -> Any:
        """A copy of the model holding the engine's final global state (None in timing
        mode)."""
        import copy

        state = getattr(self.engine, "state", None)
        if self.model is None or state is None:
            return None
        model = copy.deepcopy(self.model)
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()})
        return model


@dataclass(frozen=True)
class Outcome:
    """A finished run: its log, the facts its files need, and the final global model."""

    log: RunLog
    facts: RunFacts
    model: Any = None


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
        if sc.costs.backward_factor != cal.backward_factor:
            raise UserError(
                f"at 'costs.backward_factor': {sc.costs.backward_factor:g} is not allowed "
                f"with costs.calibration '{sc.costs.calibration}', which was fitted counting "
                f"{cal.backward_factor:g} backward MACs per forward MAC (its a and b hold "
                "only for MACs counted that way; another factor would scale every step's "
                f"time silently). Allowed: costs.backward_factor {cal.backward_factor:g} "
                "(or unset it to that), or a calibration fitted with the factor you want.")
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


def world_features(sc: Scenario) -> dict[str, str]:
    """The world models ``sc`` configures: feature -> the key that asks for it."""
    out: dict[str, str] = {}
    if sc.fleet.network.sharing != "off":
        out["sharing"] = "fleet.network.sharing"
    for i, c in enumerate(sc.fleet.classes):
        if c.bandwidth is not None:
            out.setdefault("bandwidth", f"fleet.classes[{i}].bandwidth")
        if c.energy is not None:
            out.setdefault("energy", f"fleet.classes[{i}].energy")
    return out


def _refuse_unsimulated(sc: Scenario, source: str | None) -> None:
    """A model the scenario configures and the engine does not simulate yet is an
    error, never a run that silently leaves it out (the engine lists what it simulates
    in ``fleetsim.engine.WORLD_FEATURES``)."""
    import fleetsim.engine

    done = getattr(fleetsim.engine, "WORLD_FEATURES", frozenset())
    asked = world_features(sc)
    for feature, key in asked.items():
        if feature not in done:
            raise UserError(f"{source or '<scenario>'}: at '{key}': the engine does not "
                            f"simulate {feature} yet (fleetsim.links, fleetsim.energy and "
                            "fleetsim.traces.bandwidth model it; the engine's integration "
                            "is pending). Allowed: leave it out for now.")
    # decisions that see energy need the engine to tell them (StepObservation's energy
    # fields, FleetView.battery_fraction); without it they would decide blind
    if sc.policy.name == "distreal-energy" and "energy" in asked \
            and "observations" not in done:
        raise UserError(f"{source or '<scenario>'}: at 'policy.name': distreal-energy needs "
                        "the engine to pass energy to policies (StepObservation.compute_w, "
                        "energy_used_j, energy_left_j), which it does not do yet. Allowed: "
                        "distreal, or no energy model (then distreal-energy is distreal).")
    if sc.selector.name == "battery" and "battery_selection" not in done:
        raise UserError(f"{source or '<scenario>'}: at 'selector.name': selector 'battery' "
                        "needs the engine to report battery levels to selection "
                        "(FleetView.battery_fraction), which it does not do yet. Allowed: "
                        "another selector for now.")


def _unbound_battery_fraction(device: int, t: float) -> float:
    raise RuntimeError("FleetView.battery_fraction is read before the engine set it")


def _battery_view(fleet: Fleet) -> Any:
    """A placeholder for the selectors' view of battery levels where some class has a
    battery (the engine, which owns the batteries, replaces it); None where none has."""
    from fleetsim.engine.timing import one_per_class

    if any(fleet.battery(d) is not None for d in one_per_class(fleet)):
        return _unbound_battery_fraction
    return None


def build(sc: Scenario, source: str | None = None, progress: bool = False,
          callbacks: Sequence[Callback] = ()) -> Built:
    """Fleet, data, model, cost model, policy, selector, backend and engine for ``sc``.

    ``progress`` adds a progress bar (and shows the DSE's); ``callbacks`` are told of
    every round and of the run's end.
    """
    fleet = Fleet(sc.fleet, sc.seed, source)
    _refuse_unsimulated(sc, source)
    backend: Backend | None = None
    try:
        if sc.training.mode == "full":
            settings = trainer_settings(sc)
            flip = label_flippers(sc, fleet.class_of)
            if flip:  # label-flipping attackers (only then: the settings stay as before)
                settings = dataclasses.replace(settings, label_flip=flip)
            backend = make_backend(settings, backend_settings(sc))
            model = backend.trainer.model
            n_samples = backend.trainer.partition.sizes()
        else:
            from fleetsim.nn import build_model

            ds, n_samples = build_data_sizes(sc.data, sc.fleet.devices, sc.seed)
            model = build_model(sc.model.arch, ds.input_shape, ds.num_classes,
                                sc.model.options)
        costs = cost_model(sc, model)
    except UserError as exc:  # the model does not fit the data, or the calibration
        if backend is not None:
            backend.close()
        raise _in_file(exc, source) from None
    pcls = POLICIES.get(sc.policy.name)
    if not model.groups and sc.policy.name not in FIXED_WORK:
        if backend is not None:
            backend.close()
        raise UserError(
            f"{source or '<scenario>'}: at 'policy.name': {sc.policy.name!r} trains "
            "sub-networks, and the model has no droppable groups (model.options.groups: "
            f"none). Allowed: a fixed-work policy ({', '.join(sorted(FIXED_WORK))}), or "
            "model.options.groups: auto (the default).")
    options = dict(sc.policy.options)
    if "front" in pcls.Options.model_fields and options.get("front") is None:
        # DISTREAL-family policies: the front of this scenario's DSE settings (cached)
        # the search writes its cache there: find out now, not after the search
        from fleetsim.dse import cache_dir as dse_cache_dir
        from fleetsim.paths import check_output_dir

        check_output_dir(dse_cache_dir(sc.dse), "dse.cache_dir",
                         source=source or "<scenario>")
        options["front"] = str(front_for(sc, progress=progress))
    ctx = PolicyContext(
        groups=tuple((g.name, g.channels) for g in model.groups),
        class_names=tuple(c.name for c in fleet.classes),
        class_peaks=tuple(c.peak_macs_per_s for c in fleet.classes),
        costs=costs, local_steps=sc.training.local_steps, batch_size=sc.training.batch_size,
        deadline_s=sc.training.deadline_s, seed=sc.seed,
        timing_only=sc.training.mode == "timing", local_epochs=sc.training.local_epochs,
        class_mean_availability=class_mean_availability(fleet, sc.seed))
    try:
        policy = pcls(pcls.Options(**options), ctx)
    except UserError as exc:  # a policy's own check (front file, class names): add the file
        raise _in_file(exc, source) from None
    scls = SELECTORS.get(sc.selector.name)
    selector = scls(scls.Options(**sc.selector.options),
                    FleetView(fleet.n, fleet.class_of, np.asarray(n_samples),
                              _battery_view(fleet)))
    cbs = ([ProgressBar()] if progress else []) + list(callbacks)
    server_opt = None
    if backend is not None:
        from fleetsim.server.optimizers import make_server_optimizer

        server_opt = make_server_optimizer(sc.server.optimizer, backend.buffer_names)
    engine = Engine(engine_settings(sc), fleet, costs, policy, selector, backend,
                    np.asarray(n_samples), cbs, server_opt,
                    update_pipeline(sc, np.asarray(fleet.class_of)))
    facts = RunFacts(tuple(c.name for c in fleet.classes), np.asarray(fleet.class_of),
                     np.asarray(n_samples), sc.training.batch_size,
                     trains=sc.training.mode == "full")
    return Built(engine, backend, facts, model if backend is not None else None)


def run_scenario(sc: Scenario, source: str | None = None, progress: bool = False,
                 callbacks: Sequence[Callback] = ()) -> RunLog:
    """Run ``sc`` to completion and return its log (nothing written)."""
    return run_outcome(sc, source, progress, callbacks).log


def run_outcome(sc: Scenario, source: str | None = None, progress: bool = False,
                callbacks: Sequence[Callback] = (), keep_model: bool = False) -> Outcome:
    """Run ``sc`` to completion: its log, facts and (``keep_model``) final global model."""
    built = build(sc, source, progress, callbacks)
    try:
        log = built.engine.run()
        model = built.final_model() if keep_model else None  # before the pool's memory goes
    finally:
        if built.backend is not None:
            built.backend.close()
    assert built.facts is not None
    return Outcome(log, built.facts, model)
