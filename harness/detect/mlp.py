"""The two-layer MLP hallucination detector on VAR features (Devils in Middle Layers, ``train.py``).

Reference behaviour (ZhangqiJiang07/middle_layers_indicating_hallucinations, ``train.py``):

- input: the VAR of layers ``start_layer..end_layer`` *inclusive* (defaults 5 and 18, 0-based),
  all heads, flattened; no normalisation;
- model: Linear(in, hidden) -> ReLU -> Linear(hidden, 2), cross-entropy, Adam, batch size 32,
  weights initialised under ``torch.manual_seed(42)``;
- data: ``random_split`` 80 % train / 20 % test under seed 42 (here stratified by label);
- grid: epochs {50, 100, 150, 200} x hidden {64, 128, 248} x lr {1e-3, 1e-4, 1e-2}; reports
  accuracy and AUROC (softmax probability of class 1) on the test split and keeps the best AUROC.

Differences here (all documented in the report a training run writes):

- label 1 is *hallucinated* (the reference's label 1 is *real*); AUROC and accuracy are unchanged
  by swapping both the labels and the class whose probability is scored;
- the grid picks its configuration on a validation split carved out of the training split
  (``selection="val"``) and then refits the chosen configuration on the whole training split, so the
  test metrics are not used for selection; ``selection="test"`` reproduces the reference (selection
  on the test split, optimistic);
- one run per (hidden, lr) trains for the largest epoch count and is evaluated after each epoch
  count of the grid: with the same seeds this equals separate runs and saves most of the time.

A trained detector is saved as ``X.safetensors`` (the MLP weights) plus ``X.json`` (layer range,
heads, hidden size, metrics, grid); never as a pickle.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from harness.detect import binary_report

REFERENCE_GRID = {"epochs": (50, 100, 150, 200), "hidden": (64, 128, 248), "lr": (1e-3, 1e-4, 1e-2)}
DEFAULT_LAYERS = (5, 18)  # inclusive, 0-based, as the reference's --start-layer/--end-layer
SEED = 42
FORMAT = "halluc-bench/var-mlp-detector/v1"


class MLP(nn.Module):
    """Linear -> ReLU -> Linear with two output classes (0 real, 1 hallucinated)."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int = 2):
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def parse_layers(spec: str | Sequence[int] | None, num_layers: int | None = None) -> tuple[int, int]:
    """(start, end) inclusive from "5-18", "5:18", (5, 18) or None (the reference's 5-18); checked against num_layers."""
    if spec is None:
        start, end = DEFAULT_LAYERS
    elif isinstance(spec, str):
        parts = spec.replace(":", "-").split("-")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"layer range {spec!r}: write START-END (inclusive, 0-based), e.g. 5-18")
        start, end = int(parts[0]), int(parts[1])
    else:
        start, end = (int(v) for v in spec)
    if start < 0 or end < start:
        raise ValueError(f"layer range {start}-{end}: need 0 <= start <= end")
    if num_layers is not None and end >= num_layers:
        raise ValueError(f"layer range {start}-{end} (inclusive) does not fit a model with {num_layers} layers "
                         f"(valid: 0-{num_layers - 1}); pick a smaller range for small models, e.g. 1-2")
    return start, end


def select_layers(var: torch.Tensor, layers: tuple[int, int]) -> torch.Tensor:
    """Flattened features [..., (end - start + 1) * H] of VAR [..., L, H] for layers start..end inclusive."""
    start, end = layers
    if var.shape[-2] <= end:
        raise ValueError(f"VAR has {var.shape[-2]} layers; layer range {start}-{end} needs {end + 1}")
    return var[..., start:end + 1, :].flatten(-2).float()


def _loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=g)


def _probs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return model(x.float()).softmax(dim=1)[:, 1].double().numpy()


def train_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int, lr: float, epochs: int | Sequence[int],
              batch_size: int = 32, seed: int = SEED, eval_sets: dict | None = None) -> tuple[MLP, dict]:
    """Train one MLP; with a list of epoch counts also evaluate/snapshot after each of them.

    Returns (model after the last epoch, {epochs: {"state": state_dict, "<set>": report, ...}}).
    """
    marks = sorted({int(e) for e in ([epochs] if isinstance(epochs, int) else epochs)})
    torch.manual_seed(seed)
    model = MLP(x.shape[1], int(hidden), 2)
    opt = torch.optim.Adam(model.parameters(), lr=float(lr))
    loss_fn = nn.CrossEntropyLoss()
    loader = _loader(x.float(), y.long(), batch_size, seed)
    snaps: dict = {}
    for epoch in range(1, marks[-1] + 1):
        model.train()
        for bx, by in loader:
            opt.zero_grad()
            loss_fn(model(bx), by).backward()
            opt.step()
        if epoch in marks:
            snap = {"state": copy.deepcopy(model.state_dict())}
            for name, (ex, ey) in (eval_sets or {}).items():
                snap[name] = binary_report(ey.numpy(), _probs(model, ex))
            snaps[epoch] = snap
    model.eval()
    return model, snaps


def split_indices(labels: Sequence[int] | np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept, held out) index arrays, stratified: round(fraction * class size) of each class held out.

    Each class is shuffled by a seeded permutation (the reference's ``random_split`` is not
    stratified; stratifying keeps both classes in every split of small or unbalanced data).
    """
    y = np.asarray(labels).ravel()
    g = torch.Generator().manual_seed(seed)
    kept, held = [], []
    for cls in np.unique(y):
        idx = np.flatnonzero(y == cls)
        perm = idx[torch.randperm(len(idx), generator=g).numpy()]
        k = int(round(len(idx) * fraction))
        kept.append(perm[: len(idx) - k])
        held.append(perm[len(idx) - k:])
    return np.sort(np.concatenate(kept)), np.sort(np.concatenate(held))


@dataclass
class VARDetector:
    """A trained MLP plus what its input means: layers start..end (inclusive) x heads of VAR."""

    model: MLP
    layers: tuple[int, int]
    num_heads: int
    meta: dict = field(default_factory=dict)

    @property
    def input_size(self) -> int:
        return (self.layers[1] - self.layers[0] + 1) * self.num_heads

    def features(self, var: torch.Tensor) -> torch.Tensor:
        """Detector input [N, D] from VAR [N, L, H] (or [L, H] for one word)."""
        if var.shape[-1] != self.num_heads:
            raise ValueError(f"VAR has {var.shape[-1]} heads; this detector was trained on {self.num_heads}")
        return select_layers(var if var.dim() == 3 else var.unsqueeze(0), self.layers)

    def predict_proba(self, var: torch.Tensor) -> np.ndarray:
        """P(hallucinated) per word from its VAR: [N, L, H] -> [N], or [L, H] -> [1]."""
        return _probs(self.model, self.features(var))

    def predict_features(self, x: torch.Tensor) -> np.ndarray:
        """P(hallucinated) per row of ready detector inputs [N, input_size] (see ``features``)."""
        if x.shape[-1] != self.input_size:
            raise ValueError(f"features have {x.shape[-1]} columns; this detector takes {self.input_size}")
        return _probs(self.model, x.reshape(-1, self.input_size))

    def save(self, path: str | Path) -> Path:
        """Write ``X.safetensors`` (weights) and ``X.json`` (config, metrics); returns the .safetensors path."""
        from safetensors.torch import save_file

        from harness.detect.var import artifact_paths

        st, side = artifact_paths(path)
        st.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().float().contiguous() for k, v in self.model.state_dict().items()}
        save_file(state, str(st), metadata={"format": FORMAT})
        info = {"format": FORMAT, "layers": list(self.layers), "layers_inclusive": True,
                "num_heads": self.num_heads, "input_size": self.input_size,
                "hidden_size": self.model.fc1.out_features, "classes": ["real", "hallucinated"],
                "positive": "hallucinated", "weights": st.name, **self.meta}
        side.write_text(json.dumps(info, indent=1, default=_json_default) + "\n")
        return st

    @classmethod
    def load(cls, path: str | Path) -> "VARDetector":
        """A detector saved by ``save`` (path to X, X.safetensors or X.json)."""
        from safetensors.torch import load_file

        from harness.detect.var import artifact_paths

        st, side = artifact_paths(path)
        for f in (st, side):
            if not f.exists():
                raise FileNotFoundError(f"detector file not found: {f} (train one with halluc-bench-train-detector)")
        info = json.loads(side.read_text())
        if info.get("format") != FORMAT:
            raise ValueError(f"{side}: not a VAR MLP detector (format {info.get('format')!r})")
        model = MLP(int(info["input_size"]), int(info["hidden_size"]), 2)
        model.load_state_dict(load_file(str(st)))
        model.eval()
        meta = {k: v for k, v in info.items() if k not in ("format", "layers", "layers_inclusive", "num_heads",
                                                          "input_size", "hidden_size", "classes", "positive",
                                                          "weights")}
        return cls(model, (int(info["layers"][0]), int(info["layers"][1])), int(info["num_heads"]), meta)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def train_detector(var: torch.Tensor, labels: torch.Tensor, layers: tuple[int, int] = DEFAULT_LAYERS,
                   grid: dict | None = None, test_fraction: float = 0.2, val_fraction: float = 0.2,
                   selection: str = "val", batch_size: int = 32, seed: int = SEED,
                   log: Any = None) -> tuple[VARDetector, dict]:
    """Grid-search and train the MLP on VAR [N, L, H] with labels (1 hallucinated, 0 real).

    Returns (detector, report) where the report holds the split sizes, every grid point's
    selection metrics, the chosen configuration and the held-out test metrics (accuracy, AUROC).
    """
    if selection not in ("val", "test"):
        raise ValueError(f"selection={selection!r}; valid choices: val, test")
    grid = {**REFERENCE_GRID, **(grid or {})}
    y = labels.long().flatten()
    if set(y.unique().tolist()) - {0, 1}:
        raise ValueError("labels must be 0 (real) or 1 (hallucinated)")
    x = select_layers(var, layers)
    n = len(y)
    train_idx, test_idx = split_indices(y.numpy(), test_fraction, seed)
    if selection == "val":
        fit_pos, val_pos = split_indices(y[train_idx].numpy(), val_fraction, seed + 1)
        fit_idx, sel_idx = train_idx[fit_pos], train_idx[val_pos]
    else:
        fit_idx, sel_idx = train_idx, test_idx
    for name, idx in (("train", fit_idx), ("selection", sel_idx), ("test", test_idx)):
        if len(idx) == 0 or len(set(y[idx].tolist())) < 2:
            raise ValueError(f"the {name} split ({len(idx)} items) needs both classes; "
                             f"have {int((y == 1).sum())} hallucinated and {int((y == 0).sum())} real words")
    xs, ys = x[sel_idx], y[sel_idx]
    results, best = [], None
    for hidden, lr in product(grid["hidden"], grid["lr"]):
        _, snaps = train_mlp(x[fit_idx], y[fit_idx], hidden, lr, grid["epochs"], batch_size, seed,
                             eval_sets={"selection": (xs, ys)})
        for epochs, snap in sorted(snaps.items()):
            r = {"epochs": epochs, "hidden": int(hidden), "lr": float(lr), **{
                k: snap["selection"][k] for k in ("auroc", "accuracy", "accuracy_pos", "accuracy_neg")}}
            results.append(r)
            if log:
                log(f"epochs={epochs} hidden={hidden} lr={lr}: {selection} AUROC={r['auroc']:.4f} "
                    f"accuracy={100 * r['accuracy']:.2f}%")
            if best is None or (r["auroc"] or 0) > (best[0]["auroc"] or 0):
                best = (r, snap["state"])
    chosen = best[0]
    if selection == "val":  # refit the chosen configuration on the whole training split
        model, _ = train_mlp(x[train_idx], y[train_idx], chosen["hidden"], chosen["lr"], chosen["epochs"],
                             batch_size, seed)
    else:
        model = MLP(x.shape[1], chosen["hidden"], 2)
        model.load_state_dict(best[1])
        model.eval()
    test = binary_report(y[test_idx].numpy(), _probs(model, x[test_idx]))
    report = {"n": n, "n_hallucinated": int((y == 1).sum()), "n_real": int((y == 0).sum()),
              "n_train": int(len(train_idx)), "n_test": int(len(test_idx)),
              "n_selection": int(len(sel_idx)), "selection": selection, "seed": seed,
              "batch_size": batch_size, "grid": {k: list(v) for k, v in grid.items()},
              "best": chosen, "test": test, "grid_results": results}
    det = VARDetector(model, tuple(layers), int(var.shape[-1]), {"report": report})
    return det, report
