"""Bad pipeline options and undefined combinations: exit 2, one paragraph naming the file,
the key path and what is allowed (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import TINY
from tests.test_scenario_errors import check_error, run_cli

TIMING = ["--set", "training.mode=timing", "--quiet"]


def bad(tmp_path: Path, capsys: pytest.CaptureFixture[str], sets: list[str],
        *needles: str) -> None:
    p = tmp_path / "s.yaml"
    p.write_text(TINY)
    argv = ["run", str(p), "--out", str(tmp_path / "out"), *TIMING]
    for s in sets:
        argv += ["--set", s]
    code, err = run_cli(capsys, *argv)
    check_error(code, err, str(p), *needles)


CASES = {
    "trim share 0.5": (["server.aggregator={name: trimmed_mean, options: {trim: 0.5}}"],
                       ["server.aggregator.options.trim", "0.5", "less than 0.5"]),
    "krum f too large": (["server.aggregator={name: krum, options: {f: 1}}"],
                         ["server.aggregator.options.f", "n > 2f + 2 = 4",
                          "training.clients_per_round is 4", "f <= 0"]),
    "multi_krum m too large": (["server.aggregator={name: multi_krum, options: {f: 0, m: 5}}"],
                               ["server.aggregator.options.f", "n >= m + f = 5"]),
    "krum async buffer": (["server.mode=async", "server.buffer_size=3",
                           "server.aggregator={name: krum, options: {f: 1}}"],
                          ["server.aggregator.options.f", "server.buffer_size is 3"]),
    "unknown aggregator": (["server.aggregator.name=mode"],
                           ["server.aggregator.name", "unknown aggregator 'mode'", "median"]),
    "topk k = 0": (["training.update_transforms=[{name: topk, options: {ratio: 0}}]"],
                   ["training.update_transforms[0].options.ratio", "greater than 0"]),
    "qsgd levels 0": (["training.update_transforms=[{name: qsgd, options: {levels: 0}}]"],
                      ["training.update_transforms[0].options.levels"]),
    "clip without bound": (["training.update_transforms=[{name: clip}]"],
                           ["training.update_transforms[0].options.max_norm"]),
    "unknown transform": (["training.update_transforms=[{name: zip}]"],
                          ["training.update_transforms[0].name", "unknown update transform"]),
    "noise without clip": (["server.noise={name: gaussian_noise, options: "
                            "{noise_multiplier: 1}}"], ["server.noise", "no clip"]),
    "noise in async": (["server.mode=async", "training.update_transforms=[{name: clip, "
                        "options: {max_norm: 1}}]", "server.noise={name: gaussian_noise, "
                        "options: {noise_multiplier: 1}}"], ["server.noise", "async"]),
    "noise with median": (["server.aggregator.name=median", "training.update_transforms=["
                           "{name: clip, options: {max_norm: 1}}]", "server.noise={name: "
                           "gaussian_noise, options: {noise_multiplier: 1}}"],
                          ["server.noise", "'median'"]),
    "clip not last with noise": (["training.update_transforms=[{name: clip, options: "
                                  "{max_norm: 1}}, {name: topk, options: {ratio: 0.5}}]",
                                  "server.noise={name: gaussian_noise, options: "
                                  "{noise_multiplier: 1}}"],
                                 ["training.update_transforms", "clip as the last"]),
    "noise delta 1": (["training.update_transforms=[{name: clip, options: {max_norm: 1}}]",
                       "server.noise={name: gaussian_noise, options: {noise_multiplier: 1, "
                       "delta: 1}}"], ["server.noise.options.delta"]),
    "fednova with median": (["policy.name=fednova", "server.aggregator.name=median"],
                            ["server.aggregator.name", "fednova"]),
    "topk with sub-networks": (["policy.name=heterofl", "training.update_transforms=[{name: "
                                "topk, options: {ratio: 0.1}}]"],
                               ["training.update_transforms[0].name", "heterofl"]),
    "sign flip scale": (["fleet.classes.0.attack={name: sign_flip, options: {scale: -1}}"],
                        ["fleet.classes[0].attack.options.scale"]),
    "unknown attack": (["fleet.classes.0.attack={name: backdoor}"],
                       ["fleet.classes[0].attack.name", "unknown attack", "sign_flip"]),
    "label flip batched": (["training.batched=true", "fleet.classes.0.attack={name: "
                            "label_flip}"], ["training.batched", "label_flip"]),
    "boolean as a number": (["server.aggregator={name: trimmed_mean, options: {trim: true}}"],
                            ["server.aggregator.options.trim"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_pipeline_input(case: str, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    sets, needles = CASES[case]
    bad(tmp_path, capsys, sets, *needles)
