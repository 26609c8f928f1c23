#!/usr/bin/env bash
# Self-motivated Learning from scratch, as a recipe: each stage is one command.
#
#   bash run.sh                      # the default preset (about 14 minutes on a 2-core CPU)
#   PRESET=tiny bash run.sh          # a smoke test (a couple of minutes)
#   BASELINES=1 bash run.sh          # also STaR, SFT on gold rationales, PPO on exact match
#   SEEDS=3 bash run.sh              # the whole loop for seeds 1337, 1338, 1339: mean +- std
#   TASK=coinflip RUN=runs/coinflip bash run.sh
#   DATA_ARGS="--max_operand 5" bash run.sh        # knobs of the world (data/prepare.py)
#   SFT_ARGS="--max_steps 300" bash run.sh         # extra flags for a stage: GENERATE_ARGS,
#                                                  # SFT_ARGS, RM_ARGS, PPO_ARGS, EVAL_ARGS
#   REDO=1 bash run.sh               # redo every stage
#
# The paper's setting: a pretrained model (a Hugging Face folder or hub id) on one of the
# paper's datasets (data/datasets.py; SOURCE is its folder in the public layout, else it is
# downloaded). The world and pretraining are skipped: collect -> SFT -> RM -> PPO -> evaluation.
#
#   INIT=path/to/SmolLM2-135M-Instruct TASK=coin_flip SOURCE=../shared/datasets/finetune_cot \
#       PRESET=pretrained bash run.sh
#
# The hyperparameters are the scripts' own defaults (see each script's --help); PRESET picks
# each script's named override. A stage whose output exists is skipped: every script writes
# its output under its real name only when it is complete, so an interrupted run picks up
# where it stopped. A GPU is used automatically where there is one.
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in  # settings come from the environment; the header above is the help
    -h|--help) sed -n '2,/^set -euo/p' run.sh | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) echo "run.sh: takes no arguments, only environment variables (bash run.sh --help)" >&2; exit 2 ;;
esac

PRESET=${PRESET:-default}          # tiny | default | pretrained (with INIT)
TASK=${TASK:-arithmetic}           # arithmetic | coinflip | lastletter; with INIT: gsm8k, coin_flip, ...
SEED=${SEED:-1337}
SEEDS=${SEEDS:-1}
INIT=${INIT:-}                     # a pretrained model: start from it instead of the built-in world
SOURCE=${SOURCE:-}                 # with INIT: the dataset's folder (data/prepare.py --source)
SHOTS=${SHOTS:-4}                  # with INIT: exemplars in the base model's prompts (generate, base eval)
if [ -n "$INIT" ]; then RUN=${RUN:-runs/${TASK}_$PRESET}; else RUN=${RUN:-runs/$PRESET}; fi
if [ "$PRESET" = pretrained ] && [ -z "$INIT" ]; then
    echo "run.sh: PRESET=pretrained is for a pretrained model: set INIT (and TASK, SOURCE)" >&2; exit 2
fi
PY=${PYTHON:-python}
DATA_ARGS=${DATA_ARGS:-}           # extra flags for data/prepare.py, e.g. "--noise 0.3"
# extra flags for the other stages (after the preset's, so they win), e.g. SFT_ARGS="--max_steps 100"
GENERATE_ARGS=${GENERATE_ARGS:-}; SFT_ARGS=${SFT_ARGS:-}; RM_ARGS=${RM_ARGS:-}; PPO_ARGS=${PPO_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
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
evaluate() {  # evaluate NAME CHECKPOINT [FLAGS]: test accuracy at temperature 1, per-question predictions kept
    local name=$1 ckpt=$2; shift 2
    step "eval $name" "$R/eval_$name.json" $PY evaluate.py eval --ckpt "$ckpt" --data_dir "$DATA" --seed "$S" \
        --temperature 1 --out "$R/preds_$name.jsonl" --summary "$R/eval_$name.json" --overwrite --preset "$PRESET" "$@" $EVAL_ARGS
}

for ((i = 0; i < SEEDS; i++)); do
S=$((SEED + i))
R=$RUN; [ "$SEEDS" -gt 1 ] && R=$RUN/seed$S
DATA=$R/data
mkdir -p "$R"

if [ -z "$INIT" ]; then
# 0. The built-in world: train/test splits (questions + answers), the pretraining corpus
#    (careless worked solutions + rationalizations), the tokenizer.
stage "data: $TASK ($PRESET, seed $S)"
step data "$DATA/meta.json" $PY data/prepare.py --task "$TASK" --preset "$PRESET" --seed "$S" --out_dir "$DATA" \
    $DATA_ARGS

# 1. The base model: a small GPT pretrained on the corpus (the paper's pretrained LLM).
stage "pretrain the base model"
step pretrain "$R/base.pt" $PY pretrain.py --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/base.pt" --resume
BASE=$R/base.pt
BASE_FLAGS=()
else
# 0-1. The paper's setting: the dataset's train/val/test splits and the pretrained model's
#      tokenizer; the pretrained model is the base model.
stage "data: $TASK from ${SOURCE:-the download cache}, tokenizer of $INIT"
step data "$DATA/meta.json" $PY data/prepare.py --task "$TASK" ${SOURCE:+--source "$SOURCE"} \
    --tokenizer_from "$INIT" --out_dir "$DATA" $DATA_ARGS
BASE=$INIT
BASE_FLAGS=(--shots "$SHOTS")  # a base model answers behind exemplars (few-shot chain of thought)
fi
evaluate base "$BASE" "${BASE_FLAGS[@]}"
step "eval base greedy" "$R/eval_base_greedy.json" $PY evaluate.py eval --ckpt "$BASE" --data_dir "$DATA" \
    --seed "$S" --temperature 0 --out "$R/preds_base_greedy.jsonl" --summary "$R/eval_base_greedy.json" --overwrite \
    --preset "$PRESET" "${BASE_FLAGS[@]}" $EVAL_ARGS

# 2. SML steps 1-2: rationales given the correct and wrong answers; the answer-consistency
#    check sorts them into high quality (sft.jsonl) and high-vs-low pairs (pairs.jsonl).
stage "SML steps 1-2: generate and collect rationales"
step collect "$R/collect/stats.json" $PY generate.py --ckpt "$BASE" --data_dir "$DATA" --seed "$S" \
    --preset "$PRESET" --out_dir "$R/collect" --overwrite "${BASE_FLAGS[@]}" $GENERATE_ARGS

# 3a. SFT on the high-quality rationales.
stage "SML step 3a: SFT on the self-generated rationales"
step sft "$R/sft.pt" $PY train_sft.py --init "$BASE" --data "$R/collect/sft.jsonl" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out "$R/sft.pt" --resume $SFT_ARGS
evaluate sft "$R/sft.pt"

# 3b. The reward model on the rank: high above low.
stage "SML step 3b: the reward model"
step rm "$R/rm.pt" $PY train_rm.py --init "$R/sft.pt" --pairs "$R/collect/pairs.jsonl" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out "$R/rm.pt" --report "$R/rm_report.json" --overwrite $RM_ARGS

# 3c. PPO from the SFT model against the reward model, KL penalty to the SFT model.
stage "SML step 3c: PPO against the reward model"
step ppo "$R/ppo/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --rm "$R/rm.pt" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out_dir "$R/ppo" --resume $PPO_ARGS
evaluate sml "$R/ppo/ppo_best.pt"

# Baselines: rejection sampling / STaR, the annotation upper bound, RL on exact match.
if [ "$BASELINES" = "1" ]; then
    stage "baselines"
    if [ -s "$R/collect/sft_unhinted.jsonl" ]; then  # a weak base model may write no correct one
    step star "$R/star.pt" $PY train_sft.py --init "$BASE" --data "$R/collect/sft_unhinted.jsonl" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/star.pt" --resume $SFT_ARGS
    evaluate star "$R/star.pt"
    else echo "(STaR: no correct rationale without a given answer to train on; its row is left out)"; fi
    if grep -q '"rationale"' "$DATA/train.jsonl"; then  # where the dataset has gold rationales
    step gold "$R/gold.pt" $PY train_sft.py --init "$BASE" --gold "$DATA/train.jsonl" --data_dir "$DATA" \
        --preset "$PRESET" --seed "$S" --out "$R/gold.pt" --resume $SFT_ARGS
    evaluate gold "$R/gold.pt"
    fi
    # the same critic start as SML's (the standardised reward model): only the reward differs
    step "ppo exact" "$R/ppo_exact/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --reward exact \
        --rm "$R/rm.pt" --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$R/ppo_exact" --resume $PPO_ARGS
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
