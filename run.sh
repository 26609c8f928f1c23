#!/usr/bin/env bash
# Self-motivated Learning from scratch, as a recipe: each stage is one command.
#
#   bash run.sh                      # the default preset (about 10 minutes on a 2-core CPU)
#   PRESET=tiny bash run.sh          # a smoke test (a couple of minutes)
#   BASELINES=1 bash run.sh          # also RFT, STaR (STAR_ITERATIONS, default 3), SFT on gold
#                                    # rationales, PPO on exact match and on a random reward, RLOO
#                                    # and GRPO on the RM, and the base and SFT models at the
#                                    # temperature chosen on the validation split
#   ROUNDS=2 bash run.sh             # SML round 2: collect with round 1's model, then SFT, RM and
#                                    # PPO from the base model on both rounds' collections
#   SEEDS=3 bash run.sh              # the whole loop for seeds 1337, 1338, 1339: mean +- std
#   EVAL_K=8 bash run.sh             # samples per test question at temperature 1 (the default):
#                                    # their mean, pass@k and maj@k beside the greedy answer
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
# where it stopped. A GPU is used automatically where there is one. Every decision (each
# trained method's checkpoint, a control's temperature) is made on the validation split; the
# test split is read by the final evaluations only.
set -euo pipefail
cd "$(dirname "$0")"
fail() { echo "run.sh: error: $*" >&2; exit 2; }  # one line, as every script's refusals
case "${1:-}" in  # settings come from the environment; the header above is the help
    -h|--help) sed -n '2,/^set -euo/p' run.sh | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    "") ;;
    *) fail "takes no arguments, only environment variables (bash run.sh --help)" ;;
esac

PRESET=${PRESET:-default}          # tiny | default | pretrained (with INIT)
TASK=${TASK:-arithmetic}           # arithmetic | coinflip | lastletter; with INIT: gsm8k, coin_flip, ...
SEED=${SEED:-1337}
SEEDS=${SEEDS:-1}
INIT=${INIT:-}                     # a pretrained model: start from it instead of the built-in world
SOURCE=${SOURCE:-}                 # with INIT: the dataset's folder (data/prepare.py --source)
SHOTS=${SHOTS:-4}                  # with INIT: exemplars in the base model's prompts (generate, base eval)
if [ -n "$INIT" ]; then RUN=${RUN:-runs/${TASK}_$PRESET}; else RUN=${RUN:-runs/$PRESET}; fi
PY=${PYTHON:-python}
DATA_ARGS=${DATA_ARGS:-}           # extra flags for data/prepare.py, e.g. "--noise 0.3"
# extra flags for the other stages (after the preset's, so they win), e.g. SFT_ARGS="--max_steps 100"
GENERATE_ARGS=${GENERATE_ARGS:-}; SFT_ARGS=${SFT_ARGS:-}; RM_ARGS=${RM_ARGS:-}; PPO_ARGS=${PPO_ARGS:-}
EVAL_ARGS=${EVAL_ARGS:-}
ROUNDS=${ROUNDS:-1}                # SML rounds; the paper runs one
if [ "$PRESET" = tiny ]; then  # the smoke test runs every method, each as small as it goes
    BASELINES=${BASELINES:-1}; STAR_ITERATIONS=${STAR_ITERATIONS:-2}; EVAL_K=${EVAL_K:-2}
else
    BASELINES=${BASELINES:-0}; STAR_ITERATIONS=${STAR_ITERATIONS:-3}; EVAL_K=${EVAL_K:-8}
fi
REDO=${REDO:-0}

# The settings, checked before any stage: a typo is one line naming the variable, not a bash
# error (or a finished round) later.
whole() {  # whole NAME MIN: $NAME must be a whole number >= MIN (written back without leading zeros)
    local value=${!1}
    if ! [[ $value =~ ^[0-9]+$ ]] || [ $((10#${value:0:18})) -lt "$2" ]; then
        fail "$1 must be a whole number >= $2, got '$value'"
    fi
    if [ "${#value}" -gt 9 ]; then fail "$1 must be at most 999999999, got '$value'"; fi
    printf -v "$1" '%d' $((10#$value))
}
whole SEEDS 1; whole ROUNDS 1; whole STAR_ITERATIONS 1; whole EVAL_K 1; whole SEED 0; whole SHOTS 0
for flag in BASELINES REDO; do
    case ${!flag} in 0|1) ;; *) fail "$flag must be 0 or 1, got '${!flag}'" ;; esac
done
case $PRESET in tiny|default|pretrained) ;; *) fail "PRESET must be tiny, default or pretrained, got '$PRESET'" ;; esac
if [ "$PRESET" = pretrained ] && [ -z "$INIT" ]; then
    fail "PRESET=pretrained is for a pretrained model: set INIT (and TASK, SOURCE)"
fi

if [ "$REDO" = "1" ]; then rm -rf "$RUN"; fi
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
# Every SFT stage (SML's, its rounds', RFT's, STaR's, gold's) keeps the checkpoint with the best
# greedy accuracy on the validation split, the table's headline, as PPO and its variants do.
KEEP=(--keep val_greedy)
# Evaluate a method on the test split, twice: EVAL_K samples per question at temperature 1
# (their mean, pass@k and maj@k) and the greedy answer (the table's headline). Per-question
# predictions are kept for the paired comparisons. (An eval stage is done when its summary,
# written last, exists: a rerun replaces its predictions.)
evaluate() {  # evaluate NAME CHECKPOINT [FLAGS]
    local name=$1 ckpt=$2; shift 2
    step "eval $name" "$R/eval_$name.json" $PY evaluate.py eval --ckpt "$ckpt" --data_dir "$DATA" --seed "$S" \
        --temperature 1 --k "$EVAL_K" --out "$R/preds_$name.jsonl" --summary "$R/eval_$name.json" --overwrite \
        --preset "$PRESET" "$@" $EVAL_ARGS
    step "eval $name greedy" "$R/eval_${name}_greedy.json" $PY evaluate.py eval --ckpt "$ckpt" --data_dir "$DATA" \
        --seed "$S" --temperature 0 --out "$R/preds_${name}_greedy.jsonl" --summary "$R/eval_${name}_greedy.json" \
        --overwrite --preset "$PRESET" "$@" $EVAL_ARGS
}
# A control: the model at the temperature chosen on the validation split from a sweep (by the
# mean accuracy over EVAL_K samples), then EVAL_K samples per test question at that temperature:
# what sharpening alone gives.  evaluate_tuned NAME CHECKPOINT [FLAGS]
evaluate_tuned() {
    local name=$1 ckpt=$2; shift 2
    step "eval $name" "$R/eval_$name.json" $PY evaluate.py eval --ckpt "$ckpt" --data_dir "$DATA" --seed "$S" \
        --choose_temperature 1 0.8 0.6 0.4 0.2 --k "$EVAL_K" --out "$R/preds_$name.jsonl" \
        --summary "$R/eval_$name.json" --overwrite --preset "$PRESET" "$@" $EVAL_ARGS
}
# Pool collections: pool OUT_DIR DIR... (sft.jsonl and pairs.jsonl of each, one after another)
pool() {
    local out=$1; shift
    mkdir -p "$out"
    for name in sft.jsonl pairs.jsonl; do
        cat "${@/%//$name}" > "$out/$name.tmp$$" && mv "$out/$name.tmp$$" "$out/$name"
    done
}
# Collect rationales (SML steps 1-2) with a model: collect NAME CHECKPOINT OUT_DIR [FLAGS]
collect() {
    local name=$1 ckpt=$2 out=$3; shift 3
    step "$name" "$out/stats.json" $PY generate.py --ckpt "$ckpt" --data_dir "$DATA" --seed "$S" \
        --preset "$PRESET" --out_dir "$out" --overwrite "$@" $GENERATE_ARGS
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

# 2. SML steps 1-2: rationales given the correct and wrong answers; the answer-consistency
#    check sorts them into high quality (sft.jsonl) and high-vs-low pairs (pairs.jsonl).
stage "SML steps 1-2: generate and collect rationales"
collect collect "$BASE" "$R/collect" "${BASE_FLAGS[@]}"

# 3a. SFT on the high-quality rationales.
stage "SML step 3a: SFT on the self-generated rationales"
step sft "$R/sft.pt" $PY train_sft.py --init "$BASE" --data "$R/collect/sft.jsonl" --data_dir "$DATA" \
    --preset "$PRESET" --seed "$S" --out "$R/sft.pt" --resume "${KEEP[@]}" $SFT_ARGS
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

# More SML rounds (ROUNDS=n; the paper runs one): round r collects with round r-1's SML model
# (a fine-tuned model writes the zero-shot format), pools that collection with rounds 1..r-1's,
# and trains again from the base model on the pool, as STaR restarts each iteration: SFT from
# the base model, the reward model from the new SFT model, PPO from it (KL to it).
PREVIOUS=$R/ppo/ppo_best.pt
POOL=("$R/collect")
for ((round = 2; round <= ROUNDS; round++)); do
    RD=$R/round$round
    stage "SML round $round: collect with round $((round - 1))'s model; SFT, RM and PPO from the base model"
    collect "collect round$round" "$PREVIOUS" "$RD/collect" --shots 0 --k_unhinted 0
    POOL+=("$RD/collect")
    pool "$RD/pooled" "${POOL[@]}"
    step "sft round$round" "$RD/sft.pt" $PY train_sft.py --init "$BASE" --data "$RD/pooled/sft.jsonl" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$RD/sft.pt" --resume "${KEEP[@]}" $SFT_ARGS
    step "rm round$round" "$RD/rm.pt" $PY train_rm.py --init "$RD/sft.pt" --pairs "$RD/pooled/pairs.jsonl" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$RD/rm.pt" --report "$RD/rm_report.json" \
        --overwrite $RM_ARGS
    step "ppo round$round" "$RD/ppo/summary.json" $PY train_ppo.py --sft "$RD/sft.pt" --rm "$RD/rm.pt" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$RD/ppo" --resume $PPO_ARGS
    evaluate "sml_round$round" "$RD/ppo/ppo_best.pt"
    PREVIOUS=$RD/ppo/ppo_best.pt
done

# Baselines: self-training without a reward model (RFT, STaR), the annotation upper bound, RL
# on exact match, and RL on the same reward model without a critic; and the controls that
# could explain a gain without the reward's information: the base and SFT models at their best
# temperature (sharpening alone), and PPO on a random reward (RL without information).
if [ "$BASELINES" = "1" ]; then
    stage "controls: the temperature chosen on the validation split"
    evaluate_tuned base_tuned "$BASE" "${BASE_FLAGS[@]}"
    evaluate_tuned sft_tuned "$R/sft.pt"
    stage "baselines"
    # RFT: SFT of the base model on its own correct rationales written with no answer given
    if [ -s "$R/collect/rft.jsonl" ]; then  # a weak base model may write no correct one
    step rft "$R/rft.pt" $PY train_sft.py --init "$BASE" --data "$R/collect/rft.jsonl" \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/rft.pt" --resume "${KEEP[@]}" $SFT_ARGS
    evaluate rft "$R/rft.pt"
    else echo "(RFT: no correct rationale without a given answer to train on; its row is left out)"; fi
    # STaR (Zelikman et al. 2022): iteration 1 trains on the base model's collection (its correct
    # rationales with no answer given, and for a question it got wrong, the rationalizations it
    # wrote given the correct answer: generate.build_star_rows); iteration i collects again with
    # iteration i-1's model, no wrong answers needed. Every iteration fine-tunes the base model.
    STAR_DATA=$R/collect
    for ((it = 1; it <= STAR_ITERATIONS; it++)); do
        if [ "$it" -gt 1 ]; then
            STAR_DATA=$R/star$it/collect
            collect "collect star$it" "$R/star$((it - 1)).pt" "$STAR_DATA" --shots 0 --m 0
        fi
        if [ ! -s "$STAR_DATA/star.jsonl" ]; then
            echo "(STaR iteration $it: no rationale to train on; STaR stops here)"; break
        fi
        step "star$it" "$R/star$it.pt" $PY train_sft.py --init "$BASE" --data "$STAR_DATA/star.jsonl" \
            --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out "$R/star$it.pt" --resume "${KEEP[@]}" $SFT_ARGS
        evaluate "star$it" "$R/star$it.pt"
    done
    if grep -q '"rationale"' "$DATA/train.jsonl"; then  # where the dataset has gold rationales
    step gold "$R/gold.pt" $PY train_sft.py --init "$BASE" --gold "$DATA/train.jsonl" --data_dir "$DATA" \
        --preset "$PRESET" --seed "$S" --out "$R/gold.pt" --resume "${KEEP[@]}" $SFT_ARGS
    evaluate gold "$R/gold.pt"
    fi
    # the same critic start as SML's (the SFT trunk, a zero head): only the reward differs
    step "ppo exact" "$R/ppo_exact/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --reward exact \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$R/ppo_exact" --resume $PPO_ARGS
    evaluate ppo_exact "$R/ppo_exact/ppo_best.pt"
    # a random reward of the same scale, the same critic start: what RL gives without information
    step "ppo random" "$R/ppo_random/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --reward random \
        --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$R/ppo_random" --resume $PPO_ARGS
    evaluate ppo_random "$R/ppo_random/ppo_best.pt"
    # SML's reward model and KL to the SFT model, no critic: the k samples of a question are
    # each other's baseline (one model fewer in memory)
    for EST in rloo grpo; do
        step "$EST" "$R/$EST/summary.json" $PY train_ppo.py --sft "$R/sft.pt" --rm "$R/rm.pt" --estimator "$EST" \
            --data_dir "$DATA" --preset "$PRESET" --seed "$S" --out_dir "$R/$EST" --resume $PPO_ARGS
        evaluate "$EST" "$R/$EST/ppo_best.pt"
    done
fi

# Every method against SML on the same test questions (SFT: what PPO fixed and what it broke):
# the greedy answers (McNemar), and the means over the samples of each question, paired. A
# control at its chosen temperature has no greedy evaluation of its own (its model's is above).
for P in "$R"/preds_*.jsonl; do
    B=$(basename "$P" .jsonl); B=${B#preds_}
    case $B in base|sml|*_greedy) continue ;; esac
    step "compare $B" "$R/compare_${B}_sml.json" $PY evaluate.py compare "$P" \
        "$R/preds_sml.jsonl" --json "$R/compare_${B}_sml.json"
    if [ -e "$R/preds_${B}_greedy.jsonl" ]; then
    step "compare $B greedy" "$R/compare_${B}_sml_greedy.json" $PY evaluate.py compare \
        "$R/preds_${B}_greedy.jsonl" "$R/preds_sml_greedy.jsonl" --json "$R/compare_${B}_sml_greedy.json"
    fi
done
done

stage "results"
$PY -m tools.results "$RUN"
