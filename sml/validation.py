"""Checkpoint selection on the validation split: a training stage's candidates (PPO's updates,
update 0 being the SFT model itself) are compared by greedy accuracy on data_dir/val.jsonl,
held out of collection, SFT and the reward model. The test split is never read here:
evaluate.py reads it once, for the final table. Why greedy, and why these seeds: docs/ppo.md
("How PPO chooses the checkpoint it hands on")."""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from sml import rationales


@dataclass
class Validation:
    """The validation questions and how every candidate is sampled on them."""
    tok: object
    task: object
    rows: list
    seed: int  # the run's: every candidate gets the same seeds (common random numbers)
    samples: int  # samples per question at `temperature`, logged beside the greedy accuracy
    temperature: float
    max_new_tokens: int
    batch_prompts: int = None
    amp: object = nullcontext()


def evaluate_on(model, val, name, samples, temperature):
    """rationales.evaluate on the validation questions, seeded by the run's seed and `name`
    alone: (summary, per-question rows)."""
    with val.amp:
        return rationales.evaluate(model, val.tok, val.task, val.rows, temperature, samples,
                                   rationales.derive_seed(val.seed, name), quiet=True,
                                   max_new_tokens=val.max_new_tokens, batch_prompts=val.batch_prompts)


def greedy_accuracy(model, val):
    """The share of the validation questions answered right greedily: what validate(model, val,
    "val greedy", 1, 0.0) averages, train_sft.py's --keep val_greedy score."""
    summary, _ = evaluate_on(model, val, "val greedy", 1, 0.0)
    return summary["accuracy"]


def validate(model, val, name, samples, temperature):
    """Accuracy over `samples` samples per question (temperature 0: the greedy answer), with the
    same seeds at every update (common random numbers: candidates differ by their weights, not
    by their luck), and its standard error over questions."""
    _, preds = evaluate_on(model, val, name, samples, temperature)
    per_q = torch.tensor([sum(p["sample_correct"]) / samples for p in preds], dtype=torch.float64)
    se = float(per_q.std() / len(per_q) ** 0.5) if len(per_q) > 1 else float("nan")
    return float(per_q.mean()), se


def choose_checkpoint(model, val, update, rec, choice, save_best):
    """Checkpoint selection by greedy validation accuracy, the table's headline (a T=1 accuracy
    rewards sharpening even while the greedy answers get worse); the mean accuracy of
    val.samples samples at val.temperature is logged beside it, in `rec`. `choice` holds the
    selection so far (best_val, best_update, val_history: the loop's state, saved with it);
    save_best() writes the model when it is the new best (ties go to the earlier update)."""
    rec["val_greedy_accuracy"], rec["val_greedy_se"] = validate(model, val, "val greedy", 1, 0.0)
    rec["val_accuracy"], rec["val_se"] = validate(model, val, "val", val.samples, val.temperature)
    choice.val_history.append({"update": update, "greedy_accuracy": rec["val_greedy_accuracy"],
                               "greedy_se": rec["val_greedy_se"], "accuracy": rec["val_accuracy"],
                               "se": rec["val_se"]})
    if rec["val_greedy_accuracy"] > choice.best_val:
        choice.best_val, choice.best_update = rec["val_greedy_accuracy"], update
        save_best()
    print(f"update {update}: validation greedy {100 * rec['val_greedy_accuracy']:.1f}% (se "
          f"{100 * rec['val_greedy_se']:.1f}), at T={val.temperature:g} {100 * rec['val_accuracy']:.1f}% "
          f"(se {100 * rec['val_se']:.1f}, {len(val.rows)} questions x {val.samples}); best so far: "
          f"update {choice.best_update}")
