"""Review (issue 13): a calibration is used only with the backward factor it was fitted
with (its a and b hold for MACs counted that way)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetsim.build import load_scenario
from fleetsim.calibration import Calibration, write_calibration
from fleetsim.errors import UserError
from fleetsim.nn import build_model
from tests.conftest import TINY


def _cost_model():  # type: ignore[no-untyped-def]
    from fleetsim.build import cost_model

    return cost_model


def test_calibration_with_another_backward_factor_is_a_user_error(tmp_path: Path) -> None:
    cal = Calibration(1e-9, 1e-4, 0.99, "mlp", backward_factor=2.0, input_shape=(1, 8, 8),
                      num_classes=10)
    path = tmp_path / "cal.json"
    write_calibration(cal, path)
    sc = load_scenario(None, [f"costs.calibration={path}", "costs.backward_factor=1.0"],
                       text=TINY)
    model = build_model("mlp", (1, 8, 8), 10, {"hidden": [16]})
    with pytest.raises(UserError, match="backward_factor"):
        _cost_model()(sc, model)
