"""VAR features of generated object words, labelled real / hallucinated by CHAIR (Devils in Middle Layers).

For every object word CHAIR finds in an answer, the visual attention ratio of its first sub-token
(``harness.detect.var``: attention mass on the image tokens of the query row that generated the
token, per layer and head) is stored with its label, 1 = hallucinated (the MSCOCO object is not in the
image's ground truth), 0 = real. Answers come from an answers file (teacher-forced on the recorded
text) or are generated fresh (greedy by default; the generated ids themselves are teacher-forced).

    halluc-bench-extract-var model=tiny_llava benchmark=smoke out=outputs/var/tiny
    halluc-bench-extract-var model=llava15_7b answers=PATH/answers.jsonl out=outputs/var/llava

Config: ``configs/extract_var.yaml``. Output: ``<out>.safetensors`` (``features`` [N, layers, heads],
``labels`` [N]) + ``<out>.json`` (``meta``; ``rows``: per word question_id, image_id, word, chair_word,
object, hallucinated, character ``start``/``end`` in the answer, ``token`` index in the answer's
tokens; ``answers``: question_id -> answer text). No pickle.
Differences from the reference's ``extract_VAR.py``: words are located by CHAIR's character spans
(synonyms and repeats are found; the reference searches the token id of the object name and skips
words it cannot find); each located word is one sample (``unique: true`` keeps the first mention per
object and answer, like the reference's per-caption sets).
"""
from __future__ import annotations

import glob
import json
import logging
import os
from pathlib import Path
from typing import Any


log = logging.getLogger("extract_var")


def _sources(c: dict) -> list[dict]:
    """Work units: {question_id, image_path, image_id, question, answer (None = generate)}."""
    kinds = set(c.get("kinds") or [])

    def keep(meta: Any) -> bool:
        kind = meta.get("kind") if isinstance(meta, dict) else None
        return not kinds or kind is None or kind in kinds

    if c.get("answers"):
        from harness.records import read_answers

        out = []
        for r in read_answers(c["answers"]):
            if r.get("skipped") or not keep(r.get("meta")):
                continue
            path = r.get("image")
            if (not path or not Path(path).exists()) and c.get("image_root") and r.get("image_id"):
                path = str(Path(c["image_root"]).expanduser() / str(r["image_id"]))
            if r.get("question") is None:
                raise ValueError(f"{c['answers']}: record {r['question_id']!r} has no `question` (needed to rebuild the prompt)")
            out.append({"question_id": r["question_id"], "image_path": path, "image_id": r.get("image_id") or path,
                        "question": r["question"], "answer": r["answer"], "prompt": r.get("prompt")})
    elif c.get("images"):
        paths = []
        for pat in c["images"]:
            paths += sorted(glob.glob(os.path.expanduser(str(pat)))) or [str(pat)]
        out = [{"question_id": Path(p).name, "image_path": p, "image_id": Path(p).name, "question": c["prompt"],
                "answer": None} for p in paths]
    else:
        from harness.pipeline import build_benchmark

        bench = build_benchmark(c["benchmark"])
        out = [{"question_id": it.question_id, "image_path": it.image_path,
                "image_id": it.meta.get("coco_id") if isinstance(it.meta, dict) and it.meta.get("coco_id") is not None
                else (it.image_id or it.question_id),
                "question": it.prompt, "answer": None} for it in bench.items() if keep(it.meta)]
    if c.get("limit"):
        out = out[: int(c["limit"])]
    return out


def extract(c: dict, adapter: Any = None) -> dict:
    """Run the extraction for a plain config dict (see configs/extract_var.yaml); returns a summary."""
    import torch

    from benchmarks.chair_metric import coco_image_id, load_ground_truth
    from harness.detect.var import (num_heads, answer_mask_from_ids, answer_mentions, check_eager,
                                    mention_features, save_var, teacher_forced_answers, teacher_forced_var,
                                    token_char_spans)
    from harness.images import load_image

    if adapter is None:
        from harness.models.loader import load_adapter

        adapter = load_adapter(c["model"])
    check_eager(adapter)
    gt = load_ground_truth(str(c.get("ground_truth") or "lemma_pos"))
    row = c.get("row") or "generating"
    units = _sources(c)
    if not units:
        raise ValueError("nothing to extract: no answers/items left after the `kinds`/`limit` filters")
    decoding = dict(c.get("decoding") or {"strategy": "greedy"})
    if not decoding.get("max_new_tokens"):
        decoding["max_new_tokens"] = (c.get("benchmark") or {}).get("max_new_tokens") or 64
    feats, labels, rows, texts = [], [], [], {}
    stats = {"answers": 0, "mentions": 0, "not_located": 0, "duplicates_dropped": 0, "no_ground_truth": 0,
             "prompt_mismatch": 0}
    bs = int(c.get("batch_size") or 4)
    for start in range(0, len(units), bs):
        chunk = units[start:start + bs]
        images = [load_image(u["image_path"], u["question_id"]) for u in chunk]
        batch = adapter.prepare(images, [u["question"] for u in chunk])
        for u, prompt in zip(chunk, batch.prompts):
            if u.get("prompt") and u["prompt"] != prompt and not stats.get("prompt_mismatch"):
                log.warning("%s: the recorded prompt differs from this model config's prompt (%r vs %r); "
                            "the teacher-forced attention uses the latter", u["question_id"], u["prompt"][:80], prompt[:80])
            stats["prompt_mismatch"] = stats.get("prompt_mismatch", 0) + int(bool(u.get("prompt")) and u["prompt"] != prompt)
        if chunk[0]["answer"] is not None:
            per = teacher_forced_answers(adapter, batch, [u["answer"] for u in chunk], row=row)
            answers = [u["answer"] for u in chunk]
        else:
            ids = adapter.generate_ids(batch, decoding)
            var = teacher_forced_var(adapter, batch, ids, answer_mask_from_ids(ids, adapter.tokenizer), row=row)
            answers = adapter.decode(ids)
            per = []
            for b in range(len(chunk)):
                text, spans = token_char_spans(adapter.tokenizer, ids[b].tolist())
                per.append((text, spans, var[b]))
        for u, answer, (text, spans, v) in zip(chunk, answers, per):
            stats["answers"] += 1
            texts[str(u["question_id"])] = answer
            try:
                imid = coco_image_id(u["image_id"])
                objects = gt[imid]
            except (ValueError, KeyError):
                stats["no_ground_truth"] += 1
                log.warning("%s: no CHAIR ground truth for image %r; skipped", u["question_id"], u["image_id"])
                continue
            seen = set()
            for m, k, f in mention_features(answer, text, spans, v, answer_mentions(answer, objects)):
                stats["mentions"] += 1
                if f is None:
                    stats["not_located"] += 1
                    continue
                if c.get("unique", True):
                    if m["object"] in seen:
                        stats["duplicates_dropped"] += 1
                        continue
                    seen.add(m["object"])
                feats.append(f)
                labels.append(int(m["hallucinated"]))
                rows.append({"question_id": u["question_id"], "image_id": imid, "word": m["word"],
                             "chair_word": m["chair_word"], "object": m["object"],
                             "hallucinated": bool(m["hallucinated"]), "start": m["start"], "end": m["end"],
                             "token": int(k)})
        log.info("%d/%d answers, %d words", min(start + bs, len(units)), len(units), len(rows))
    n_layers, n_heads = adapter.num_layers, num_heads(adapter)
    features = torch.stack(feats) if feats else torch.zeros(0, n_layers, n_heads)
    meta = {"model": (c.get("model") or {}).get("name", adapter.name), "family": adapter.family,
            "num_layers": n_layers, "num_heads": n_heads, "row": row, "unique": bool(c.get("unique", True)),
            "ground_truth": str(c.get("ground_truth") or "lemma_pos"),
            "source": "answers" if c.get("answers") else "generated", "answers_file": c.get("answers"),
            "decoding": None if c.get("answers") else decoding, "labels": "1 = hallucinated, 0 = real",
            "layout": "features[n, layer, head] = image attention of the word's first sub-token", **stats,
            "n": len(rows), "n_hallucinated": int(sum(labels)), "n_real": len(labels) - int(sum(labels))}
    path = save_var(c["out"], features, torch.tensor(labels, dtype=torch.long), rows, meta,
                    extra={"answers": texts})
    summary = {k: meta[k] for k in ("n", "n_hallucinated", "n_real", "answers", "mentions", "not_located",
                                    "duplicates_dropped", "no_ground_truth", "prompt_mismatch")}
    summary["path"] = str(path)
    return summary


def main() -> None:
    """Console entry point `halluc-bench-extract-var` (Hydra overrides of configs/extract_var.yaml)."""
    import hydra
    from omegaconf import DictConfig, OmegaConf

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    @hydra.main(config_path="pkg://configs", config_name="extract_var", version_base="1.3")
    def hydra_main(cfg: DictConfig) -> None:
        import torch

        if os.environ.get("OMP_NUM_THREADS"):
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        c = OmegaConf.to_container(cfg, resolve=True)
        print(json.dumps(extract(c), indent=1))

    hydra_main()


if __name__ == "__main__":
    main()
