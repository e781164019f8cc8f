"""LVLM-LP's first-token linear probe: store first-token logits, train a logistic regression, evaluate.

Two steps (``harness.detect.probe`` documents the reference behaviour):

1. ``extract``: answer a yes/no benchmark's items and store the first generated token's logits with
   the ground-truth label (1 yes, 0 no). Configuration = run.py's Hydra overrides (``model=...
   benchmark=... decoding=... run.limit=...``)::

       python scripts/probe_first_token.py extract --out outputs/probe/llava_pope_popular \\
           model=llava15_7b benchmark=pope benchmark.split=popular benchmark.image_root=/data/coco/val2014 \\
           "benchmark.prompt_suffix='\\nAnswer the question using a single word or phrase.'"

   Writes ``OUT.safetensors`` (logits [N, vocab] float32, labels [N]) and ``OUT.json`` (per item:
   question_id, image_id, label, model answer; meta).

2. ``train``: fit ``LogisticRegression`` (the reference's defaults, C=1, max_iter=100) on one feature
   file and evaluate on another (accuracy with P(yes) > 0.5, AUROC, yes ratio), then save the probe
   as JSON for ``intervention=first_token_probe intervention.probe=PROBE.json``::

       python scripts/probe_first_token.py train --train outputs/probe/llava_pope_popular \\
           --eval outputs/probe/llava_pope_adversarial --out outputs/probe/llava_probe.json

   Without ``--eval`` a stratified ``--eval-fraction`` of the training images is held out (grouped by
   image, so no image is in both parts). LVLM-LP output files (JSONL with ``logits`` and ``label``) are
   accepted as ``--train``/``--eval`` too. Note that the shipped POPE splits (random, popular,
   adversarial) share their 500 images; LVLM-LP trains on POPE built from COCO *train* images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def compose_config(overrides: list[str]) -> dict:
    """model / benchmark / decoding / run / seed of run.py's config under Hydra overrides, as plain dicts."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import harness.cli.run  # noqa: F401  (registers the run-directory resolver and the typed schemas)

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if OmegaConf.is_config(cfg[k]) else cfg[k]
            for k in ("model", "benchmark", "decoding", "run", "seed")}


def extract(c: dict, out: str, adapter: Any = None, batch_size: int | None = None) -> dict:
    """Answer the benchmark's yes/no items, storing first-token logits and labels; returns a summary."""
    import torch

    from benchmarks.yes_no import get_parser
    from harness.detect.probe import FirstTokenLogits, save_features
    from harness.images import MissingImageError, load_image
    from harness.pipeline import build_benchmark, selected_items

    bench = build_benchmark(c["benchmark"])
    items = [it for it in selected_items(bench, (c.get("run") or {}).get("limit"))
             if isinstance(it.meta, dict) and str(it.meta.get("label", "")).lower() in ("yes", "no")]
    if not items:
        raise SystemExit(f"benchmark {bench.label()}: no items with a yes/no label")
    if adapter is None:
        from harness.models.loader import load_adapter

        adapter = load_adapter(c["model"])
    decoding = dict(c.get("decoding") or {"strategy": "greedy"})
    if not decoding.get("max_new_tokens"):
        decoding["max_new_tokens"] = c["benchmark"].get("max_new_tokens") or 16
    parser = get_parser(c["benchmark"].get("parser") or "llava")
    skip_missing = bool((c.get("run") or {}).get("skip_missing"))
    bs = int(batch_size or (c.get("run") or {}).get("batch_size") or 4)
    logits, labels, rows, missing = [], [], [], 0
    for start in range(0, len(items), bs):
        chunk, images = [], []
        for it in items[start:start + bs]:
            try:
                images.append(load_image(it.image_path, it.question_id))
                chunk.append(it)
            except MissingImageError:
                if not skip_missing:
                    raise
                missing += 1
        if not chunk:
            continue
        batch = adapter.prepare(images, [it.prompt for it in chunk])
        cap = FirstTokenLogits(adapter, len(chunk))
        with cap.active():
            ids = adapter.generate_ids(batch, decoding)
        answers = adapter.decode(ids)
        for i, (it, ans) in enumerate(zip(chunk, answers)):
            label = str(it.meta["label"]).lower()
            logits.append(cap.logits[i])
            labels.append(1 if label == "yes" else 0)
            rows.append({"question_id": it.question_id, "image_id": it.image_id, "label": label, "answer": ans,
                         "model_pred": parser(ans, label).pred, **({"split": it.meta["split"]} if "split" in it.meta else {})})
        print(f"{min(start + bs, len(items))}/{len(items)}", file=sys.stderr)
    x = torch.stack(logits)
    model_acc = sum(r["model_pred"] == r["label"] for r in rows) / len(rows)
    meta = {"model": c["model"].get("name"), "benchmark": bench.label(), "benchmark_cfg": c["benchmark"],
            "decoding": decoding, "feature": "first generated token logits (lm_head, prefill last position)",
            "labels": "1 = yes, 0 = no (ground truth)", "n": len(rows), "missing_images": missing,
            "model_accuracy": model_acc}
    path = save_features(out, x, labels, rows, meta)
    return {"path": str(path), "n": len(rows), "vocab": int(x.shape[1]), "n_yes": int(sum(labels)),
            "model_accuracy": model_acc}


def _group_split(rows: list[dict], y: Any, fraction: float, seed: int):
    """(train, eval) indices holding out whole images, about `fraction` of them (seeded)."""
    import numpy as np

    groups = [str(r.get("image_id", r.get("image", i))) for i, r in enumerate(rows)] if rows else [str(i) for i in range(len(y))]
    uniq = sorted(set(groups))
    rng = np.random.default_rng(seed)
    held = set(rng.permutation(uniq)[: max(1, int(round(len(uniq) * fraction)))].tolist())
    ev = np.array([g in held for g in groups])
    return np.flatnonzero(~ev), np.flatnonzero(ev)


def train(args: argparse.Namespace) -> dict:
    """Fit the probe, evaluate it, save JSON; returns the metrics."""
    import numpy as np

    from harness.detect.probe import LinearProbe, evaluate_probe, fit_probe, load_features

    x, y, rows, meta = load_features(args.train)
    if args.eval:
        xe, ye, _, meta_e = load_features(args.eval)
        xt, yt = x, y
    else:
        tr, ev = _group_split(rows, y, args.eval_fraction, args.seed)
        xt, yt, xe, ye, meta_e = x[tr], y[tr], x[ev], y[ev], {"held_out_from": str(args.train)}
    if xt.shape[1] != xe.shape[1]:
        raise SystemExit(f"train features have {xt.shape[1]} columns, eval features {xe.shape[1]}")
    probe = fit_probe(xt, yt, C=args.C, max_iter=args.max_iter, seed=args.seed)
    m_train = evaluate_probe(probe, xt, yt, args.threshold)
    m_eval = evaluate_probe(probe, xe, ye, args.threshold)
    probe.meta.update({"model": meta.get("model"), "train": str(args.train), "eval": str(args.eval) if args.eval else None,
                       "train_benchmark": meta.get("benchmark"), "eval_benchmark": meta_e.get("benchmark"),
                       "feature": "first generated token logits", "threshold": args.threshold,
                       "metrics": {"train": m_train, "eval": m_eval}})
    path = probe.save(args.out)
    back = LinearProbe.load(path)
    if not np.array_equal(back.predict_proba(xe[:64]), probe.predict_proba(xe[:64])):
        raise SystemExit(f"{path}: reloaded probe predicts differently")
    auroc = m_eval["auroc"]
    print(f"train n={m_train['n']} accuracy={100 * m_train['accuracy']:.2f}%")
    print(f"eval  n={m_eval['n']} accuracy={100 * m_eval['accuracy']:.2f}% "
          f"AUROC={'n/a' if auroc is None else f'{100 * auroc:.2f}'} yes_ratio={100 * m_eval['yes_ratio']:.2f}% -> {path}")
    if not probe.meta["sklearn"]["converged"]:
        print(f"note: lbfgs did not converge in {args.max_iter} iterations (as with the reference's defaults); "
              "raise --max-iter to converge", file=sys.stderr)
    return {"train": m_train, "eval": m_eval, "path": str(path)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("extract", help="store first-token logits + labels of a yes/no benchmark")
    ex.add_argument("--out", required=True, help="output stem: OUT.safetensors + OUT.json")
    ex.add_argument("overrides", nargs="*", help="run.py Hydra overrides, e.g. model=tiny_llava benchmark=pope")
    tr = sub.add_parser("train", help="fit and evaluate the logistic-regression probe")
    tr.add_argument("--train", required=True, help="features (OUT stem, .safetensors, or LVLM-LP .jsonl)")
    tr.add_argument("--eval", default=None, help="evaluation features (default: hold out images of --train)")
    tr.add_argument("--eval-fraction", type=float, default=0.3)
    tr.add_argument("--C", type=float, default=1.0)
    tr.add_argument("--max-iter", type=int, default=100)
    tr.add_argument("--threshold", type=float, default=0.5)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--out", required=True, help="the probe JSON")
    args = ap.parse_args(argv)
    if args.cmd == "extract":
        import torch

        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        summary = extract(compose_config(args.overrides), args.out)
        print(json.dumps(summary, indent=1))
        return summary
    return train(args)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
