"""
What generate.py reports about a collection (SML steps 1-2), in stats.json and on the terminal:
how many samples were kept and discarded (by reason) for each kind of given answer, the yield
by given answer and the gold answers' histograms on a choice or yes/no task (a model that can
argue for one class only teaches that class), the rows and pairs written. docs/formats.md has
stats.json's fields.
"""

from collections import Counter

from data.tasks import CLASS_KINDS
from sml.rationales import DISCARD_REASONS


def collection_stats(task, rows, records, speed):
    """stats.json's counts: kept and discarded (by reason) for each kind of hint, the labels,
    the sampling speed."""
    stats = {"questions": len(rows), "samples": len(records), "tokens": speed["tokens"],
             "seconds": speed["seconds"], "tokens_per_s": speed["tokens"] / max(1e-9, speed["seconds"]),
             "by_hint_type": {}}
    for kind in ("correct", "wrong", "none"):
        sub = [r for r in records if r["hint_type"] == kind]
        if sub:
            kept = sum(r["label"] != "discarded" for r in sub)
            stats["by_hint_type"][kind] = {
                "samples": len(sub), "kept": kept,
                # yield: the share kept (consistent with the hint; unhinted: correct, as RFT keeps)
                "yield": kept / len(sub), "correct": sum(r["correct"] for r in sub),
                "discarded": {why: n for why in DISCARD_REASONS
                              if (n := sum(r["discard_reason"] == why for r in sub))}}
            if task.answer_kind in CLASS_KINDS and kind != "none":
                stats["by_hint_type"][kind]["by_class"] = yield_by_class(task, sub)
    hinted = [r for r in records if r["hint"] is not None]
    for label in ("high", "low"):  # hinted samples only: SML's data
        stats[label] = sum(r["label"] == label for r in hinted)
    stats["discarded_hinted"] = sum(r["label"] == "discarded" for r in hinted)
    stats["rft"] = sum(r["label"] == "rft" for r in records)
    stats["questions_with_high"] = len({r["id"] for r in records if r["label"] == "high"})
    stats["questions_with_rft"] = len({r["id"] for r in records if r["label"] == "rft"})
    return stats


def yield_by_class(task, records):
    """{given answer: {"samples", "kept", "yield"}} for hinted records of a choice or yes/no
    task: a model that can argue for "no" but not for "yes" keeps "no" rationales only, and
    SFT on them teaches it to answer "no" everywhere."""
    out = {}
    for r in records:
        c = out.setdefault(task.normalize(r["hint"]), {"samples": 0, "kept": 0})
        c["samples"] += 1
        c["kept"] += r["label"] != "discarded"
    for c in out.values():
        c["yield"] = c["kept"] / c["samples"]
    return dict(sorted(out.items()))


def class_histograms(task, rows, sft, pairs):
    """For a choice or yes/no task, how many of each gold answer: the questions collected from
    (the train split's, after --limit), the SFT rows and the reward model's pairs. SFT rows
    that are mostly one class teach the majority class, whatever the split holds. Numeric and
    letter answers have too many classes to count this way: {} there."""
    if task.answer_kind not in CLASS_KINDS:
        return {}
    gold = {r["id"]: task.normalize(r["answer"]) for r in rows}
    return {name: dict(sorted(Counter(gold[x["id"]] for x in items).items()))
            for name, items in (("questions", rows), ("sft_rows", sft), ("pairs", pairs))}


def print_collection(stats, out_dir, baselines):
    """The terminal's summary of stats.json: the yield and the discards per kind of hint, the
    class histograms, the rows and pairs written (and the baselines' rows, if sampled)."""
    for kind, s in stats["by_hint_type"].items():
        kept = "consistent" if kind != "none" else "correct"
        why = ", ".join(f"{n} {r}" for r, n in s["discarded"].items()) or "none"
        by_class = ", ".join(f"{c} {100 * v['yield']:.0f}%" for c, v in s.get("by_class", {}).items())
        print(f"hint {kind:7s}: {s['kept']}/{s['samples']} {kept} ({100 * s['yield']:.1f}%"
              f"{f'; given {by_class}' if by_class else ''}); discarded: {why}")
    for name, counts in stats["classes"].items():
        print(f"{name.replace('_', ' ')} by gold answer: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    print(f"{stats['sft_rows']} SFT rows, {stats['pairs']} pairs, {stats['questions_with_high']}/"
          f"{stats['questions']} questions with a high-quality rationale, {stats['wall_seconds']:.0f}s, "
          f"{stats['tokens_per_s']:.0f} tok/s -> {out_dir}")
    if baselines:
        print(f"baselines: {stats['rft_rows']} RFT rows (correct with no answer given, on "
              f"{stats['questions_with_rft']} questions); {stats['star_rows']} STaR rows, "
              f"{stats['questions_rationalized']} questions by rationalization")
