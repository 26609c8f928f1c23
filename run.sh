#!/usr/bin/env bash
# Self-motivated Learning from scratch, as a recipe: each stage is one command.
#
#   bash run.sh                      # the default preset (about 13 minutes on a 2-core CPU)
#   PRESET=tiny bash run.sh          # a smoke test (a couple of minutes)
#   BASELINES=1 bash run.sh          # also STaR, SFT on gold rationales, PPO on exact match
#   SEEDS=3 bash run.sh              # the whole loop for seeds 1337, 1338, 1339: mean +- std
#   TASK=coinflip RUN=runs/coinflip bash run.sh
#   DATA_ARGS="--max_operand 5" bash run.sh        # knobs of the world (data/prepare.py)
#   REDO=1 bash run.sh               # redo every stage
#
# The hyperparameters are the scripts' own defaults (see each script's --help); PRESET picks
# each script's named override. A stage whose output exists is skipped: every script writes
# its output under its real name only when it is complete, so an interrupted run picks up
# where it stopped. A GPU is used automatically where there is one.
set -euo pipefail
cd "$(dirname "$0")"

PRESET=${PRESET:-default}          # tiny | default
TASK=${TASK:-arithmetic}           # arithmetic | coinflip | lastletter
SEED=${SEED:-1337}
SEEDS=${SEEDS:-1}
RUN=${RUN:-runs/$PRESET}
PY=${PYTHON:-python}
DATA_ARGS=${DATA_ARGS:-}           # extra flags for data/prepare.py, e.g. "--noise 0.3"
if [ "$PRESET" = tiny ]; then BASELINES=${BASELINES:-1}; else BASELINES=${BASELINES:-0}; fi

if [ "${REDO:-0}" = "1" ]; then rm -rf "$RUN"; fi
mkdir -p "$RUN"
stage() { echo; echo "=== $1"; }
# Run a stage unless its output exists; record its wall time in timings.jsonl.
step() {  # step NAME OUTPUT COMMAND...
    local name=$1 out=$2; shift 2
    if [ -e "$out" ]; then echo "($name: $out exists, skipped)"; return; fi
    local t0=$SECONDS
    "$@"
    echo "{\"stage\": \"$name\", \"seconds\": $((SECONDS - t0))}" >> "$R/timings.jsonl"
}
# (an eval stage is done when its summary, written last, exists: a rerun replaces its predictions)
evaluate() {  # evaluate NAME CHECKPOINT: test accuracy at temperature 1, per-question predictions kept
    step "eval $1" "$R/eval_$1.json" $PY evaluate.py eval --ckpt "$2" --data_dir "$DATA" --seed "$S" \
        --temperature 1 --out "$R/preds_$1.jsonl" --summary "$R/eval_$1.json" --overwrite
}

for ((i = 0; i < SEEDS; i++)); do
S=$((SEED + i))
R=$RUN; [ "$SEEDS" -gt 1 ] && R=$RUN/seed$S
DATA=$R/data
mkdir -p "$R"

# 0. The built-in world: train/test splits (questions + answers), the pretraining corpus
#    (careless worked solutions + rationalizations), the tokenizer.
stage "data: $TASK ($PRESET, seed $S)"
step data "$DATA/meta.json" $PY data/prepare.py --task "$TASK" --preset "$PRESET" --seed "$S" --out_dir "$DATA" \
    $DATA_ARGS

# 1. The base model: a small GPT pretrained on the corpus (the paper's pretrained LLM).
stage "pretrain the base model"
step pretrain "$R/base.pt" $PY pretrain.py --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/base.pt" --resume
evaluate base "$R/base.pt"
step "eval base greedy" "$R/eval_base_greedy.json" $PY evaluate.py eval --ckpt "$R/base.pt" --data_dir "$DATA" \
    --seed "$S" --temperature 0 --out "$R/preds_base_greedy.jsonl" --summary "$R/eval_base_greedy.json" --overwrite

# 2. SML steps 1-2: rationales given the correct and wrong answers; the answer-consistency
#    check sorts them into high quality (sft.jsonl) and high-vs-low pairs (pairs.jsonl).
stage "SML steps 1-2: generate and collect rationales"
step collect "$R/collect/stats.json" $PY generate.py --ckpt "$R/base.pt" --data_dir "$DATA" --seed "$S" \
    --preset "$PRESET" --out_dir "$R/collect" --overwrite

# 3a. SFT on the high-quality rationales.
stage "SML step 3a: SFT on the self-generated rationales"
step sft "$R/sft.pt" $PY train_sft.py --init "$R/base.pt" --data "$R/collect/sft.jsonl" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out "$R/sft.pt" --resume
evaluate sft "$R/sft.pt"

# 3b. The reward model on the rank: high above low.
stage "SML step 3b: the reward model"
step rm "$R/rm.pt" $PY train_rm.py --init "$R/sft.pt" --pairs "$R/collect/pairs.jsonl" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out "$R/rm.pt" --report "$R/rm_report.json" --overwrite

# 3c. PPO from the SFT model against the reward model, KL penalty to the SFT model.
stage "SML step 3c: PPO against the reward model"
step ppo "$R/ppo/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --rm "$R/rm.pt" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out_dir "$R/ppo" --resume
evaluate sml "$R/ppo/ppo_best.pt"

# Baselines: rejection sampling / STaR, the annotation upper bound, RL on exact match.
if [ "$BASELINES" = "1" ]; then
    stage "baselines"
    step star "$R/star.pt" $PY train_sft.py --init "$R/base.pt" --data "$R/collect/sft_unhinted.jsonl" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/star.pt" --resume
    evaluate star "$R/star.pt"
    step gold "$R/gold.pt" $PY train_sft.py --init "$R/base.pt" --gold "$DATA/train.jsonl" --data_dir "$DATA" \
        --preset "$PRESET" --seed "$S" --out "$R/gold.pt" --resume
    evaluate gold "$R/gold.pt"
    # the same critic start as SML's (the standardised reward model): only the reward differs
    step "ppo exact" "$R/ppo_exact/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --reward exact \
        --rm "$R/rm.pt" --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$R/ppo_exact" --resume
    evaluate ppo_exact "$R/ppo_exact/ppo_best.pt"
fi

# The paper's comparison, question by question: what PPO fixed and what it broke; and SML
# against each baseline on the same questions.
for B in sft star gold ppo_exact; do
    if [ -e "$R/preds_$B.jsonl" ]; then
        step "compare $B" "$R/compare_${B}_sml.json" $PY evaluate.py compare "$R/preds_$B.jsonl" \
            "$R/preds_sml.jsonl" --json "$R/compare_${B}_sml.json"
    fi
done
done

stage "results"
$PY results.py "$RUN"
