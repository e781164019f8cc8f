"""Hallucination detectors read off a model's own signals.

- ``harness.detect.var``: visual attention ratio (VAR) features of generated object words
  (Jiang et al., "Devils in Middle Layers of Large Vision-Language Models", CVPR 2025;
  reference: ZhangqiJiang07/middle_layers_indicating_hallucinations).
- ``harness.detect.mlp``: the two-layer MLP detector trained on a layer range of VAR features.
- ``harness.detect.probe``: a logistic-regression probe on the first generated token's logits
  (Zhao et al., "The First to Know", LVLM-LP; reference: Qinyu-Allen-Zhao/LVLM-LP).

Metrics shared by the detectors live here (numpy only; scikit-learn is needed only to fit the probe).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (positives = label 1), ties counted half, as sklearn's roc_auc_score.

    Raises ValueError when only one class is present (AUROC is undefined).
    """
    y = np.asarray(labels).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.shape}) and scores ({s.shape}) differ in length")
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC is undefined with only one class in the labels")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_report(labels: Sequence[int], probs: Sequence[float], threshold: float = 0.5) -> dict:
    """Accuracy (prob > threshold is class 1), AUROC, per-class accuracy and counts for a binary classifier.

    ``accuracy`` and the per-class accuracies are fractions in [0, 1]; ``auroc`` is None when
    only one class is present.
    """
    y = np.asarray(labels).astype(int).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    pred = (p > threshold).astype(int)
    out = {"n": int(len(y)), "n_pos": int((y == 1).sum()), "n_neg": int((y == 0).sum()),
           "accuracy": float((pred == y).mean()) if len(y) else float("nan")}
    out["accuracy_pos"] = float((pred[y == 1] == 1).mean()) if out["n_pos"] else None
    out["accuracy_neg"] = float((pred[y == 0] == 0).mean()) if out["n_neg"] else None
    try:
        out["auroc"] = roc_auc(y, p)
    except ValueError:
        out["auroc"] = None
    return out
