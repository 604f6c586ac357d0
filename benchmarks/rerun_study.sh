#!/usr/bin/env bash
# The DISTREAL study of docs/reproduction.md, rerun at equal simulated time with each
# method's batch-norm mode chosen on the validation split, plus the batch-norm ablation
# (issues 26 and 28). One command, from the repository root:
#
#     bash benchmarks/rerun_study.sh [JOBS]        # JOBS: runs at once (default 2)
#
# Resumable: run it again after an interruption and complete runs are kept. Writes
# runs/paper-lr (sweep), runs/paper (study), runs/paper-bn (ablation), runs/paper-anchor
# (the front test, benchmarks/anchor_test.py) and a timing log
# runs/rerun-times.txt; then copies the summaries into docs/reproduction/ and rewrites
# the tables of docs/reproduction.md from them (the text around them is updated by hand).
#
# The environment variables below default to the study; a smoke test of this script sets
# them to a tiny scenario (SCENARIO, POLICIES, BUDGET, LRS, SEEDS, DWELLS, EXTRA). Run it
# in a copy of the repository (it rewrites docs/reproduction.md); 85 s on 2 busy cores:
#
#   SCENARIO=scenarios/tiny.yaml POLICIES="fedavg,fedavg:stragglers=wait,heterofl,fjord" \
#   BUDGET=120 LRS=0.1,0.3 SEEDS=0-1 DWELLS=300,600 EXTRA='--set model.arch=cnn4
#   --set model.options={"channels":[4,4,4,4],"norm":"bn"} --set data.validation_fraction=0.2' \
#   bash benchmarks/rerun_study.sh 2
set -euo pipefail
JOBS=${1:-2}
FLEETSIM=${FLEETSIM:-fleetsim}       # e.g. FLEETSIM=.venv/bin/fleetsim PYTHON=.venv/bin/python
SCENARIO=${SCENARIO:-scenarios/paper/mnist.yaml}
BUDGET=${BUDGET:-600}  # simulated seconds: the old study's 20 rounds x the 30 s deadline
LRS=${LRS:-0.02,0.05,0.1}
SEEDS=${SEEDS:-0-4}
DWELLS=${DWELLS:-5,20,80}
EXTRA=${EXTRA:-}       # more --set options for every batch (the smoke test's)
EQUAL="--set training.rounds=null --set training.time_budget_s=$BUDGET $EXTRA"
POLICIES=${POLICIES:-"distreal,distreal:anchor_full=true,uniform-adaptive,distreal-static,fedavg,fedavg:stragglers=wait,fedprox,fednova,federated_dropout,heterofl,fjord,fedrolex"}
mkdir -p runs
log() { echo "$(date -u +%FT%TZ) $*" | tee -a runs/rerun-times.txt; }

log "sweep: learning rate x batch-norm mode per method, validation split"
$FLEETSIM compare "$SCENARIO" --policies "$POLICIES" --seeds 0 \
    --set training.optimizer.lr=$LRS --set model.options.bn_stats=running,batch,static \
    --set eval.split=validation --set fleet.traces.options.mean_dwell_s=20 $EQUAL \
    --out runs/paper-lr --jobs "$JOBS" --quiet
$FLEETSIM choose runs/paper-lr --key training.optimizer.lr --key model.options.bn_stats

log "study: every method at its chosen (lr, bn_stats), 5 seeds x 3 availability speeds"
$FLEETSIM compare "$SCENARIO" --policies "$(cat runs/paper-lr/policies.txt)" \
    --seeds "$SEEDS" --set fleet.traces.options.mean_dwell_s=$DWELLS $EQUAL \
    --out runs/paper --jobs "$JOBS" --quiet
$FLEETSIM report runs/paper --target-accuracy 0.9 --baseline fedavg

log "ablation: the methods whose default is not running statistics, and FedAvg-discard,"
log "  at their chosen learning rate under each batch-norm mode, 5 seeds, mean dwell 20 s"
tr ',' '\n' < runs/paper-lr/policies.txt \
    | grep -E '^(distreal|fedavg|heterofl|fjord|fedrolex):' | grep -v 'stragglers=' \
    | sed -E 's/;model\.options\.bn_stats="?[a-z]+"?//' | paste -sd, - > runs/paper-lr/ablation.txt
$FLEETSIM compare "$SCENARIO" --policies "$(cat runs/paper-lr/ablation.txt)" \
    --seeds "$SEEDS" --set fleet.traces.options.mean_dwell_s=20 \
    --set model.options.bn_stats=running,batch,static $EQUAL \
    --out runs/paper-bn --jobs "$JOBS" --quiet
$FLEETSIM report runs/paper-bn --target-accuracy 0.9 --baseline fedavg

if tr ',' '\n' < runs/paper-lr/policies.txt | grep -E '^distreal(:|$)' | grep -qv anchor_full
then
    log "front test: distreal with anchor_full at plain distreal's chosen (lr, bn_stats),"
    log "  paired with the study's plain distreal runs"
    ${PYTHON:-python} benchmarks/anchor_test.py --scenario "$SCENARIO" --seeds "$SEEDS" \
        --dwells "$DWELLS" --budget "$BUDGET" --jobs "$JOBS" --fleetsim "$FLEETSIM" $EXTRA \
        | tee runs/paper-anchor.txt
fi

log "copy the summaries and rewrite the document's tables"
cp runs/paper-lr/choice.csv docs/reproduction/lr_choice.csv
cp runs/paper/summary.csv docs/reproduction/summary.csv
cp runs/paper-bn/summary.csv docs/reproduction/ablation_summary.csv
${PYTHON:-python} benchmarks/check_reproduction.py --summary docs/reproduction/summary.csv \
    --ablation docs/reproduction/ablation_summary.csv --write
log "done"
