"""HallusionBench metrics exactly as tianyi-lab/HallusionBench ``evaluation.py`` + ``utils.py`` compute them.

Every scored question is a dict with the source fields ``category`` (VD|VS), ``subcategory``,
``set_id``, ``figure_id``, ``question_id``, ``visual_input``, ``gt_answer`` ("1" yes, "0" no),
its ``label`` ("1" correct, "0" incorrect, "2" unclear) and, for the consistency analysis,
``same`` ("1" / "0": its answer agrees with the answer on figure 0 of its question pair).

- correct: label "1"; VS questions on figure 0 (no image) also accept "2" (``assign_correctness``).
- aAcc: correct questions / questions.
- fAcc: figures (category, subcategory, set_id, figure_id; VS figure 0 excluded) whose every
  question is correct / figures (``get_eval_fig``), with the reference's correct / inconsistent /
  wrong split and mean per-figure accuracy ``score``.
- qAcc: question pairs (category, subcategory, set_id, question_id) whose every member is correct /
  pairs (``get_eval_pair_all``); easy / hard pair accuracy: the same over questions with
  visual_input != "2" / == "2" (``get_eval_pair_easy`` / ``_hard``; the reference's leaderboard
  table calls them "easy aAcc" / "hard aAcc").
- overall: mean(aAcc, fAcc, qAcc), as leaderboard.json.
- LH / VI / Mixed: the reference's per-question failure analysis (``*_cg`` counters), as percent of
  the questions it attributes, when every pair's figure-0 question and every ``same`` is known.
- yes_no_bias: ``pct_diff`` and ``fp_ratio`` of ``yes_ratio_stats`` (fractions, as the reference).
All accuracies are percentages (the reference prints them x100, rounded to 4 places; here unrounded).
"""
from __future__ import annotations

from collections import defaultdict
from statistics import mean
from typing import Iterable, Sequence

CORRECT, INCORRECT, UNCLEAR = "1", "0", "2"


def pair_key(r: dict) -> str:
    """The question-pair key: category_subcategory_set_question (figures vary within a pair)."""
    return "_".join([str(r["category"]), str(r["subcategory"]), str(r["set_id"]), str(r["question_id"])])


def figure_key(r: dict) -> str:
    """The figure key: category_subcategory_set_figure."""
    return "_".join([str(r["category"]), str(r["subcategory"]), str(r["set_id"]), str(r["figure_id"])])


def item_key(r: dict) -> str:
    """The question's unique name: category_subcategory_set_figure_question (the reference's per-question key)."""
    return "_".join([str(r["category"]), str(r["subcategory"]), str(r["set_id"]), str(r["figure_id"]),
                     str(r["question_id"])])


def is_correct(r: dict) -> bool:
    """The reference's correctness of a labelled question (VS without a figure also accepts 'unclear')."""
    if r["category"] == "VS" and int(r["figure_id"]) == 0:
        return r["label"] in (CORRECT, UNCLEAR)
    return r["label"] == CORRECT


def _pct(num: int, den: int) -> float | None:
    return 100.0 * num / den if den else None


def _all_correct_share(rows: Iterable[dict], key) -> tuple[float | None, int]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r["correct"])
    return _pct(sum(all(v) for v in groups.values()), len(groups)), len(groups)


def figure_stats(rows: Sequence[dict]) -> dict:
    """Per-figure consistency (``get_eval_fig``): fAcc and the correct / inconsistent / wrong split."""
    figs: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        if r["category"] == "VS" and str(r["figure_id"]) == "0":
            continue
        figs[figure_key(r)].append(r["correct"])
    n = len(figs)
    correct = sum(all(v) for v in figs.values())
    wrong = sum(not any(v) for v in figs.values())
    return {"fAcc": _pct(correct, n), "figures": n, "correct": _pct(correct, n), "wrong": _pct(wrong, n),
            "inconsistent": _pct(n - correct - wrong, n),
            "score": (100.0 * mean(sum(v) / len(v) for v in figs.values())) if n else None}


def accuracy_block(rows: Sequence[dict]) -> dict:
    """aAcc, fAcc, qAcc, easy/hard pair accuracy and overall for a set of scored questions."""
    q_acc, n_pairs = _all_correct_share(rows, pair_key)
    easy, n_easy = _all_correct_share([r for r in rows if str(r["visual_input"]) != "2"], pair_key)
    hard, n_hard = _all_correct_share([r for r in rows if str(r["visual_input"]) == "2"], pair_key)
    a_acc = _pct(sum(r["correct"] for r in rows), len(rows))
    f_acc = figure_stats(rows)["fAcc"]
    parts = (a_acc, f_acc, q_acc)
    return {"aAcc": a_acc, "fAcc": f_acc, "qAcc": q_acc, "easy_pair_acc": easy, "hard_pair_acc": hard,
            "overall": mean(parts) if None not in parts else None, "n": len(rows), "n_pairs": n_pairs,
            "n_easy_pairs": n_easy, "n_hard_pairs": n_hard}


def failure_analysis(rows: Sequence[dict]) -> dict | None:
    """The reference's LH / VI / Mixed attribution per question (``*_cg`` of ``get_eval_pair_all``), in percent.

    None when a pair's figure-0 question or a ``same`` label is missing (the reference would fail).
    """
    orig = {pair_key(r): r["label"] for r in rows if str(r["figure_id"]) == "0"}
    counts = {"LH": 0, "VI": 0, "Mixed": 0}
    for r in rows:
        lab, fig0 = r["label"], str(r["figure_id"]) == "0"
        if not fig0 and (pair_key(r) not in orig or r.get("same") is None):
            return None
        lh = vi = False
        if fig0:
            if r["category"] == "VD":
                vi = lab in (INCORRECT, UNCLEAR)
            else:
                lh = lab == INCORRECT
        elif r["category"] == "VD":
            o, same = orig[pair_key(r)], r["same"] == "1"
            if o == CORRECT and lab == INCORRECT:
                lh, vi = same, True
            elif lab in (INCORRECT, UNCLEAR):
                vi = True
        else:
            o, same = orig[pair_key(r)], r["same"] == "1"
            if o == INCORRECT:
                if lab == INCORRECT:
                    lh, vi = True, not same
                elif lab == UNCLEAR:
                    lh = vi = True
            elif o == UNCLEAR:
                vi = lab in (INCORRECT, UNCLEAR)
            elif lab == UNCLEAR:
                vi = True
            elif lab == INCORRECT:
                if str(r["visual_input"]) == "1":
                    vi = True
                elif str(r["visual_input"]) == "2":
                    lh, vi = same, not same
        if lh and vi:
            counts["Mixed"] += 1
        elif lh:
            counts["LH"] += 1
        elif vi:
            counts["VI"] += 1
    total = sum(counts.values())
    return {k: _pct(v, total) for k, v in counts.items()} | {"n_attributed": total}


def yes_no_bias(rows: Sequence[dict]) -> dict:
    """``yes_ratio_stats``: pct_diff = predicted-yes share - true-yes share; fp_ratio = share of errors on no-questions.

    As the reference, "predicted yes" is inferred from correctness (correct == gt_answer), which
    holds for yes/no answers.
    """
    if not rows:
        return {"pct_diff": None, "fp_ratio": None}
    gt = [int(r["gt_answer"]) for r in rows]
    pred_yes = [int(int(r["correct"]) == g) for r, g in zip(rows, gt)]
    wrong_gt = [g for r, g in zip(rows, gt) if not r["correct"]]
    return {"pct_diff": sum(pred_yes) / len(rows) - sum(gt) / len(rows),
            "fp_ratio": (len(wrong_gt) - sum(wrong_gt)) / len(wrong_gt) if wrong_gt else None}


def hallusion_scores(rows: Sequence[dict]) -> dict:
    """All metrics over labelled questions: overall, per category (VD, VS), figure consistency, analysis, bias."""
    rows = [{**r, "correct": is_correct(r)} for r in rows]
    out = accuracy_block(rows)
    for cat in ("VD", "VS"):
        sub = [r for r in rows if r["category"] == cat]
        if sub:
            out[cat] = accuracy_block(sub)
    out["figure_consistency"] = figure_stats(rows)
    analysis = failure_analysis(rows)
    if analysis is not None:
        out["failure_analysis"] = analysis
    out["yes_no_bias"] = yes_no_bias(rows)
    return out
