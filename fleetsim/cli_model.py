"""``fleetsim model``: a scenario's network as the simulator sees it, without a run.

Prints the droppable groups (channels tied together, the unit a dropout vector acts on),
their channel counts and how many forward MACs per sample depend on each, the whole
network's MACs, parameters and bytes, and a training mini-batch's MACs, for built-in and
user models alike (``model.arch: user`` loads the user's factory as a run would).
"""

from __future__ import annotations

import argparse
from typing import Any

MODEL_EPILOG = """examples:
  fleetsim model scenarios/paper/mnist.yaml
  fleetsim model examples/models/resnet18.yaml --set model.options.kwargs.width=16
"""


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model", help="print a scenario's model: droppable groups, channels, MACs",
        description="Build the scenario's model (user models included) on its dataset's "
        "input shape and print its droppable groups with their channels, the forward MACs "
        "per sample that each group's channels carry (those a dropout of the whole group "
        "would remove), and the network's MACs, parameters and bytes. Nothing is trained.",
        epilog=MODEL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", help="scenario YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help="override a scenario key (repeatable)")
    p.set_defaults(func=cmd_model)


def model_table(sc: Any) -> str:
    """The text ``fleetsim model`` prints for the scenario ``sc``."""
    from fleetsim.build import cost_model
    from fleetsim.nn import build_model
    from fleetsim.training import build_data_sizes

    ds, _ = build_data_sizes(sc.data, sc.fleet.devices, sc.seed)
    model = build_model(sc.model.arch, ds.input_shape, ds.num_classes, sc.model.options)
    costs = cost_model(sc, model)
    full = costs.full_forward_macs
    shape = "x".join(str(x) for x in ds.input_shape)
    b = sc.training.batch_size
    lines = [f"model {sc.model.arch} on {sc.data.dataset} (input {shape}, "
             f"{ds.num_classes} classes)",
             f"  forward MACs per sample: {full:,}",
             f"  training MACs per mini-batch of {b} (forward x (1 + backward factor "
             f"{costs.backward_factor:g})): {costs.step_macs(None, b):,.0f}",
             f"  parameters: {costs.full_params:,} ({costs.model_bytes():,} bytes on the "
             "wire)",
             f"  droppable groups: {len(model.groups)}"]
    if not model.groups:
        lines.append("  (none: only fixed-work policies can train this model)")
        return "\n".join(lines)
    width = max(len(g.name) for g in model.groups)
    lines.append(f"  {'group':<{width}}  {'channels':>8}  {'forward MACs/sample carried':>27}"
                 f"  {'share':>6}")
    n = len(model.groups)
    for i, g in enumerate(model.groups):
        # all but one channel of this group dropped: the MACs that go with its channels
        vec = [0.0] * n
        vec[i] = (g.channels - 1) / g.channels if g.channels > 1 else 0.0
        # exact MACs (not the calibration's channel blocks): what the shapes say
        kept = round(costs.step(vec, 1).macs / (1.0 + costs.backward_factor))
        carried = full - kept if g.channels > 1 else 0
        lines.append(f"  {g.name:<{width}}  {g.channels:>8}  {carried:>27,}  "
                     f"{carried / full:>6.1%}")
    lines.append("  (a MAC between two groups' channels is carried by both: the shares can "
                 "add up to more than 100%)")
    return "\n".join(lines)


def cmd_model(args: argparse.Namespace) -> int:
    from fleetsim.build import load_scenario

    sc = load_scenario(args.scenario, list(args.overrides))
    print(model_table(sc))
    return 0
