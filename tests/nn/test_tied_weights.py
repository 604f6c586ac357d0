"""Tied weights (``fc3.weight = fc2.weight``): the documented refusal naming the graph
node, never a bare KeyError from model building (issue 24, finding 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from fleetsim.nn.trace import UntraceableModel, trace_groups

NET = '''
import torch
from torch import nn


class Tied(nn.Module):
    def __init__(self, input_shape, num_classes, tie="weight"):
        super().__init__()
        n = 1
        for s in input_shape:
            n *= s
        self.fc1 = nn.Linear(n, 16)
        self.fc2 = nn.Linear(16, 16)
        self.fc3 = nn.Linear(16, 16)
        setattr(self.fc3, tie, getattr(self.fc2, tie))
        self.out = nn.Linear(16, num_classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def make(input_shape, num_classes, tie="weight"):
    return Tied(input_shape, num_classes, tie)
'''


def _net(tie: str) -> nn.Module:
    ns: dict = {}
    exec(compile(NET, "net.py", "exec"), ns)
    return ns["make"]((1, 8, 8), 10, tie)


@pytest.mark.parametrize("tie", ["weight", "bias"])
def test_tied_parameters_are_refused_naming_the_node(tie: str) -> None:
    with pytest.raises(UntraceableModel) as e:
        trace_groups(_net(tie), (1, 8, 8))
    msg = str(e.value)
    assert "graph node 'fc3'" in msg and f"'fc2.{tie}'" in msg and "tied weights" in msg


def test_untied_copy_still_traces() -> None:
    net = _net("weight")
    net.fc3.weight = nn.Parameter(net.fc2.weight.detach().clone())  # equal values, not tied
    found = trace_groups(net, (1, 8, 8))
    assert [g.name for g in found.groups] == ["fc1", "fc2", "fc3"]
    assert torch.equal(net.fc3.weight, net.fc2.weight)


def test_tied_weights_exit_2_from_the_command_line(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from fleetsim.cli import main

    (tmp_path / "net.py").write_text(NET)
    tiny = Path(__file__).parents[2] / "scenarios" / "tiny.yaml"
    code = main(["run", str(tiny), "--quiet", "--out", str(tmp_path / "o"),
                 "--set", "model.arch=user",
                 "--set", f"model.options={{factory: {tmp_path / 'net.py'}:make}}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err and "KeyError" not in err
    assert "graph node 'fc3'" in err and "'fc2.weight'" in err
