"""Train the two-layer MLP hallucination detector on VAR features (Devils in Middle Layers, ``train.py``).

    halluc-bench-train-detector --features outputs/var/llava15_7b --layers 5-18 --out outputs/detectors/llava15_7b
    halluc-bench-train-detector --features outputs/var/tiny --layers 1-2 --epochs 20 --hidden 16 --lr 0.01 --out /tmp/det

Input: files written by ``halluc-bench-extract-var`` (several are concatenated). ``--layers START-END``
is inclusive and 0-based (the reference's --start-layer 5 --end-layer 18); a tiny model with 4 layers
needs e.g. 1-2. The grid defaults to the reference's: epochs 50 100 150 200, hidden 64 128 248, lr
0.001 0.0001 0.01. The configuration is chosen on a validation part of the training split
(``--selection val``, then refit on the whole training split) or, as the reference, on the test split
(``--selection test``). Accuracy and AUROC on the held-out test split are printed and stored in
``<out>.json`` next to the weights ``<out>.safetensors``. Labels: 1 hallucinated, 0 real.
"""
from __future__ import annotations

import argparse


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from harness.detect.mlp import REFERENCE_GRID

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--features", nargs="+", required=True, help="VAR files (X, X.safetensors) from extract_var.py")
    ap.add_argument("--layers", default="5-18", help="layer range START-END, inclusive, 0-based (default 5-18)")
    ap.add_argument("--epochs", nargs="+", type=int, default=list(REFERENCE_GRID["epochs"]))
    ap.add_argument("--hidden", nargs="+", type=int, default=list(REFERENCE_GRID["hidden"]))
    ap.add_argument("--lr", nargs="+", type=float, default=list(REFERENCE_GRID["lr"]))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--test-fraction", type=float, default=0.2)
    ap.add_argument("--val-fraction", type=float, default=0.2, help="part of the training split used for selection")
    ap.add_argument("--selection", choices=["val", "test"], default="val")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", required=True, help="output stem: writes OUT.safetensors and OUT.json")
    ap.add_argument("--quiet", action="store_true", help="do not print every grid point")
    return ap.parse_args(argv)


def run(argv: list[str] | None = None) -> dict:
    """Train, save, reload-check and print the report; returns the report."""
    import torch

    from harness.detect.mlp import VARDetector, parse_layers, train_detector
    from harness.detect.var import load_var

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    feats, labels, metas = [], [], []
    for f in args.features:
        x, y, _, meta = load_var(f)
        feats.append(x)
        labels.append(y)
        metas.append(meta)
    shapes = {tuple(x.shape[1:]) for x in feats}
    if len(shapes) != 1:
        raise SystemExit(f"feature files disagree on [layers, heads]: {sorted(shapes)}")
    var, y = torch.cat(feats), torch.cat(labels)
    layers = parse_layers(args.layers, var.shape[1])
    print(f"{len(y)} words: {int((y == 1).sum())} hallucinated, {int((y == 0).sum())} real; "
          f"layers {layers[0]}-{layers[1]} (inclusive) x {var.shape[2]} heads")
    grid = {"epochs": args.epochs, "hidden": args.hidden, "lr": args.lr}
    try:
        det, report = train_detector(var, y, layers, grid, args.test_fraction, args.val_fraction, args.selection,
                                     args.batch_size, args.seed, log=None if args.quiet else print)
    except ValueError as e:
        raise SystemExit(f"train_detector: {e}") from None
    det.meta.update({"features": [str(f) for f in args.features], "model": metas[0].get("model"),
                     "family": metas[0].get("family"), "row": metas[0].get("row")})
    path = det.save(args.out)
    back = VARDetector.load(path)  # the saved detector must reproduce the predictions exactly
    probe_x = var[: min(len(var), 64)]
    if not (torch.tensor(back.predict_proba(probe_x)) == torch.tensor(det.predict_proba(probe_x))).all():
        raise SystemExit(f"{path}: reloaded detector predicts differently")
    b, t = report["best"], report["test"]
    print(f"best (by {args.selection} AUROC): epochs={b['epochs']} hidden={b['hidden']} lr={b['lr']}")
    print(f"test: AUROC={t['auroc']:.4f} accuracy={100 * t['accuracy']:.2f}% (n={t['n']}) -> {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    """Console entry point `halluc-bench-train-detector`."""
    run(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
