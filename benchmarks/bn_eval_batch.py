"""How the evaluation batch size changes the test accuracy of a model that uses batch
statistics at test time (``model.options.bn_stats: batch``, DISTREAL's default).

With ``batch``, a batch norm normalises each test mini-batch by that mini-batch's own
mean and variance, so the accuracy the server reports depends on the size of the
mini-batches the model sees at test time. That size is ``fleetsim.training.EVAL_SLICE``
(100 samples, the last slice shorter), whatever ``eval.batch_size`` says: the slices are
fixed so that a split evaluation (worker pool, Ray) gives the same bits, and
``eval.batch_size`` only groups the loss sum. This trains one model of the study's set-up
and evaluates the same final weights with several slice sizes (patched here, for the
measurement only); a ``running`` model is evaluated alongside as the control (its
statistics are fixed, so the slice size must not matter).

    python benchmarks/bn_eval_batch.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import time

import fleetsim
from fleetsim import training
from fleetsim.build import trainer_settings
from fleetsim.training import Trainer

SIZES = (1000, 100, 32, 8, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = fleetsim.load_scenario("scenarios/paper/mnist.yaml")
    print(f"scenarios/paper/mnist.yaml, fedavg at lr 0.02, {args.rounds} rounds, seed "
          f"{args.seed}, mean dwell 20 s; test accuracy of the same final weights")
    print(f"{'bn_stats':>9}  " + "  ".join(f"{'bs=' + str(b):>8}" for b in SIZES))
    for mode in ("batch", "running"):
        sc = fleetsim.with_changes(base, {
            "policy.name": "fedavg", "training.rounds": args.rounds, "seed": args.seed,
            "training.optimizer.lr": 0.02, "model.options.bn_stats": mode,
            "fleet.traces.options.mean_dwell_s": 20})
        t0 = time.perf_counter()
        res = fleetsim.run(sc)
        state = res.model.state_dict()
        accs = []
        default = training.EVAL_SLICE
        trainer = Trainer(trainer_settings(sc))
        try:
            for b in SIZES:
                training.EVAL_SLICE = b
                accs.append(trainer.evaluate(state)[0])
        finally:
            training.EVAL_SLICE = default
        assert accs[SIZES.index(default)] == res.final_accuracy  # the run's own evaluation
        print(f"{mode:>9}  " + "  ".join(f"{a:>8.4f}" for a in accs)
              + f"   ({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
