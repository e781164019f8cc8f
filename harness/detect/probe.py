"""A linear probe on the first generated token's logits (LVLM-LP, "The First to Know").

Reference behaviour (Qinyu-Allen-Zhao/LVLM-LP):

- features (``run_model.py`` / ``model/LLaVA.py`` ``forward_with_probs``): ``outputs.scores`` of
  ``generate(..., output_scores=True)`` at token 0 (``--token_id 0``), the full-vocabulary scores of
  the first generated token; the POPE scripts decode greedily (``--temperature 0.0``), so these are
  the raw logits;
- labels (``dataset/POPE.py``): POPE's ground truth, ``1`` for "yes", ``0`` for "no"; questions get
  the suffix "\\nAnswer the question using a single word or phrase.";
- probe (``Task5_POPE_eval.ipynb``): ``sklearn.linear_model.LogisticRegression()`` with default
  settings (L2, C=1.0, lbfgs, max_iter=100) fit on the POPE *train* split (built from COCO train
  images), evaluated on the *val* split; ``predict_proba(x)[:, 1] > 0.5`` is the "yes" decision and
  ``utils/metric.py`` ``evaluate`` reports accuracy, AP, F1, AUROC.

Here the logits are read from the language model head's output at the first decoding step (a
forward hook on the ``lm_head`` site), which equals the scores above for greedy decoding and stays
the raw logits under sampling or beam search. The probe is stored as JSON (coefficients,
intercept, training settings, metrics) and applied with numpy: sigmoid(x . w + b), equal to
sklearn's ``predict_proba`` - never a pickle.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from harness.detect import binary_report

FORMAT = "halluc-bench/first-token-probe/v1"


@dataclass
class LinearProbe:
    """Logistic regression on first-token logits: P(yes) = sigmoid(x . coef + intercept)."""

    coef: np.ndarray
    intercept: float
    meta: dict = field(default_factory=dict)

    @property
    def num_features(self) -> int:
        return int(self.coef.shape[0])

    def decision_function(self, x: Any) -> np.ndarray:
        """x . coef + intercept per row of x [N, D] (or one row [D])."""
        x = np.asarray(x.float().cpu().numpy() if torch.is_tensor(x) else x, dtype=np.float64)
        x = x.reshape(-1, x.shape[-1])
        if x.shape[1] != self.num_features:
            raise ValueError(f"features have {x.shape[1]} columns; the probe was trained on {self.num_features} "
                             f"(a different model/vocabulary?)")
        return x @ self.coef + self.intercept

    def predict_proba(self, x: Any) -> np.ndarray:
        """P(label 1, "yes") per row."""
        z = self.decision_function(x)
        e = np.exp(-np.abs(z))  # numerically stable logistic function
        return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))

    def save(self, path: str | Path) -> Path:
        """Write the probe as JSON (floats written exactly: ``json`` uses repr)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"format": FORMAT, "num_features": self.num_features, "intercept": float(self.intercept),
                "positive": "yes", **self.meta, "coef": [float(v) for v in self.coef]}
        path.write_text(json.dumps(data) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LinearProbe":
        """A probe written by ``save``."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"probe not found: {path} (train one with halluc-bench-probe)")
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a first-token probe (format {data.get('format')!r})")
        coef = np.asarray(data.pop("coef"), dtype=np.float64)
        meta = {k: v for k, v in data.items() if k not in ("format", "num_features", "intercept", "positive")}
        return cls(coef, float(data["intercept"]), meta)


def fit_probe(x: Any, y: Sequence[int], C: float = 1.0, max_iter: int = 100, seed: int = 0) -> LinearProbe:
    """Fit ``LogisticRegression(C, max_iter)`` (the reference's defaults) on x [N, D], y in {0, 1}."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x.float().numpy() if torch.is_tensor(x) else x)
    y = np.asarray(y).astype(int)
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError(f"the probe needs both labels 0 (no) and 1 (yes); got {sorted(set(y.tolist()))}")
    clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(x, y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    meta = {"sklearn": {"C": C, "max_iter": max_iter, "solver": clf.solver, "penalty": "l2",
                        "converged": converged, "n_iter": int(np.max(clf.n_iter_))}}
    return LinearProbe(clf.coef_[0].astype(np.float64), float(clf.intercept_[0]), meta)


def evaluate_probe(probe: LinearProbe, x: Any, y: Sequence[int], threshold: float = 0.5) -> dict:
    """Accuracy (P(yes) > threshold), AUROC, yes ratio and counts on x [N, D] with labels y (1 yes)."""
    p = probe.predict_proba(x)
    rep = binary_report(y, p, threshold)
    rep["yes_ratio"] = float((p > threshold).mean()) if len(p) else float("nan")
    return rep


# ------------------------------------------------------------------ capturing first-token logits
class FirstTokenLogits:
    """A forward hook on the LM head keeping the logits of the first decoding step's last position.

    The first LM-head call of a ``generate`` is the prefill; its last position's logits are the
    first generated token's logits. Rows of a batch expanded for beam search (B * k) are reduced
    to one per prompt (beams start identical).
    """

    def __init__(self, adapter: Any, batch_size: int):
        self.adapter = adapter
        self.batch_size = batch_size
        self.logits: torch.Tensor | None = None

    def _hook(self, module, args, output):
        if self.logits is None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            last = out[:, -1, :] if out.dim() == 3 else out
            if last.shape[0] != self.batch_size and last.shape[0] % self.batch_size == 0:
                last = last[:: last.shape[0] // self.batch_size]
            self.logits = last.detach().float().cpu()
        return None

    def active(self) -> Iterator[None]:
        """Context manager: the hook registered on the ``lm_head`` site."""
        from harness.hooks import forward_hooks

        return forward_hooks(self.adapter.model, {self.adapter.site_path("lm_head"): self._hook})


def save_features(path: str | Path, logits: torch.Tensor, labels: Sequence[int], rows: list[dict], meta: dict) -> Path:
    """``X.safetensors`` (logits [N, V] float32, labels [N] int64) and ``X.json`` (rows, meta)."""
    from safetensors.torch import save_file

    from harness.detect.var import artifact_paths

    st, side = artifact_paths(path)
    st.parent.mkdir(parents=True, exist_ok=True)
    save_file({"logits": logits.float().contiguous(), "labels": torch.as_tensor(list(labels)).long()}, str(st))
    side.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
    return st


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[dict], dict]:
    """(logits [N, V], labels [N], rows, meta) from ``save_features`` files or an LVLM-LP output JSONL.

    LVLM-LP's ``run_model.py`` writes one JSON object per line with ``logits`` (the first token's
    scores) and ``label`` (1 yes / 0 no); other fields are kept as the rows.
    """
    p = Path(path)
    if p.suffix == ".jsonl":
        from harness.records import read_jsonl

        recs = read_jsonl(p)
        if not recs or "logits" not in recs[0] or "label" not in recs[0]:
            raise ValueError(f"{p}: expected LVLM-LP records with 'logits' and 'label'")
        x = np.asarray([r["logits"] for r in recs], dtype=np.float32)
        y = np.asarray([int(r["label"]) for r in recs])
        rows = [{k: v for k, v in r.items() if k != "logits"} for r in recs]
        return x, y, rows, {"source": "lvlm-lp", "path": str(p)}
    from safetensors.torch import load_file

    from harness.detect.var import artifact_paths

    st, side = artifact_paths(p)
    if not st.exists():
        raise FileNotFoundError(f"first-token features not found: {st}")
    t = load_file(str(st))
    data = json.loads(side.read_text()) if side.exists() else {"rows": [], "meta": {}}
    return t["logits"].numpy(), t["labels"].numpy(), data.get("rows", []), data.get("meta", {})
