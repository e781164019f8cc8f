"""Scoring EOS Supervision ("Less is More", Yue et al., ACL 2024): score LLaVA-style training data, optionally filter it.

    halluc-bench-score-eos --model llava15_7b --data llava_instruct_150k.json \\
        --image-folder coco/train2017 --out scores.jsonl [--max-neg 20 --max-pos 5 --filtered kept.json]

    halluc-bench-score-eos --model tiny_llava --out /tmp/scores.jsonl   # bundled demo data

Per record (see `harness/eos/scoring.py` for the exact reference computation):
S_pos = -sum log p(EOS) over label positions whose label is EOS,
S_neg = -sum log(max(1 - p(EOS), 1e-5)) over the other label positions,
written as JSONL rows {id, index, S_pos, S_neg, n_pos, n_neg} in data order.

With `--max-pos` and/or `--max-neg`, a record is kept when S_pos <= max-pos and S_neg <= max-neg (an unset
bound does not filter); the kept records (unchanged, in order) go to `--filtered` (a LLaVA JSON list), and
each score row gets `"kept": true|false`. The reference (`llava_llama_filter.py`) only writes the scores;
how thresholds are chosen is up to the caller (inspect the score distribution first).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path




def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from harness.eos.data import add_data_arguments

    add_data_arguments(ap)
    ap.add_argument("--out", required=True, help="scores JSONL")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-pos", type=float, default=None, help="keep records with S_pos <= this")
    ap.add_argument("--max-neg", type=float, default=None, help="keep records with S_neg <= this")
    ap.add_argument("--filtered", default=None, help="where to write the kept records (needs a bound)")
    ap.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)
    if args.filtered and args.max_pos is None and args.max_neg is None:
        ap.error("--filtered needs --max-pos and/or --max-neg")

    import torch

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    from harness.eos.data import ConversationDataset, load_model_config, load_records
    from harness.eos.scoring import keep_mask, score_dataset
    from harness.models.loader import load_adapter

    adapter = load_adapter(load_model_config(args.model, args.set))
    records = load_records(args.data)
    dataset = ConversationDataset(adapter, records, args.image_folder, args.max_length)
    scores = score_dataset(adapter, dataset, batch_size=args.batch_size)
    filtering = args.max_pos is not None or args.max_neg is not None
    keep = keep_mask(scores, args.max_pos, args.max_neg) if filtering else None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for i, row in enumerate(scores):
            if keep is not None:
                row = {**row, "kept": keep[i]}
            f.write(json.dumps(row) + "\n")
    msg = f"scored {len(scores)} records -> {out}"
    if keep is not None:
        kept = [rec for rec, k in zip(records, keep) if k]
        msg += f"; kept {len(kept)}/{len(records)} (max_pos={args.max_pos}, max_neg={args.max_neg})"
        if args.filtered:
            Path(args.filtered).parent.mkdir(parents=True, exist_ok=True)
            Path(args.filtered).write_text(json.dumps(kept, indent=1) + "\n")
            msg += f" -> {args.filtered}"
    print(msg, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
