"""Batched generation over benchmark items, appending crash-safe answer records; resumes by skipping done ids."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from tqdm import tqdm

from benchmarks.base import Item
from harness.images import MissingImageError, check_image, load_image
from harness.records import AnswerWriter, done_ids

log = logging.getLogger("halluc_bench")


def batch_seed(seed: int, first_id: Any) -> int:
    """A per-batch seed derived from the run seed and the batch's first item id."""
    return int(hashlib.sha256(f"{seed}:{first_id}".encode()).hexdigest()[:8], 16)


def generate_answers(items: Sequence[Item], out_file: Path, adapter_factory: Callable[[], Any],
                     intervention: Any, decoding: dict, fingerprint: dict, batch_size: int = 4,
                     seed: int = 0, skip_missing: bool = False, desc: str = "generating") -> int:
    """Answer every item not yet in `out_file`; returns how many were answered now.

    The model is only loaded when something is left to answer. Records are flushed per batch,
    so a killed run loses at most the batch in flight and resumes where it stopped.
    """
    done = done_ids(out_file)
    pending = [it for it in items if str(it.question_id) not in done]
    if done:
        log.info("resuming %s: %d of %d items already answered, %d to go", out_file,
                 len(items) - len(pending), len(items), len(pending))
    if not pending:
        return 0
    if not skip_missing:  # fail before loading a model (possibly a long download) when images are missing
        for it in pending:
            if it.image is None:
                check_image(it.image_path, it.question_id)
    adapter = adapter_factory()
    intervention.setup(adapter)
    n = 0
    with AnswerWriter(out_file) as writer, tqdm(total=len(items), initial=len(items) - len(pending),
                                                 desc=desc, unit="item") as bar:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start:start + batch_size]
            records, ready, images = [], [], []
            for it in chunk:
                try:
                    images.append(it.image.convert("RGB") if it.image is not None and it.image_path is None
                                  else load_image(it.image_path, it.question_id))
                    ready.append(it)
                except MissingImageError as e:
                    if not skip_missing:
                        raise
                    records.append(_record(it, "", None, fingerprint, skipped=str(e)))
            if ready:
                records += answer_batch(adapter, intervention, ready, images, decoding, fingerprint, seed)
            writer.write_batch(records)
            n += len(records)
            bar.update(len(chunk))
    return n


def answer_batch(adapter: Any, intervention: Any, items: Sequence[Item], images: list, decoding: dict,
                 fingerprint: dict, seed: int = 0) -> list[dict]:
    """Answer records for one batch of items with their loaded images, under the intervention."""
    batch = adapter.prepare(images, [it.prompt for it in items])
    batch.items = list(items)
    torch.manual_seed(batch_seed(seed, items[0].question_id))
    with intervention.session(adapter, batch) as plan:
        ids = generate_with_plan(adapter, plan, batch, decoding)
        answers = adapter.decode(ids)
        if plan.postprocess is not None:
            answers = plan.postprocess(answers, batch)
        infos = plan.row_info
    return [_record(it, ans, prompt, fingerprint, info=(infos[i] if infos else None))
            for i, (it, ans, prompt) in enumerate(zip(items, answers, batch.prompts))]


def generate_with_plan(adapter: Any, plan: Any, batch: Any, decoding: dict) -> torch.Tensor:
    """New token ids for a batch under an intervention's plan: its decoding engine, else `generate`."""
    kwargs = dict(plan.generate_kwargs)
    if plan.generate_fn is not None:
        return plan.generate_fn(batch, decoding, plan.logits_processors, **kwargs)
    return adapter.generate_ids(batch, decoding, plan.logits_processors, **kwargs)


def _record(it: Item, answer: str, prompt: str | None, fingerprint: dict, skipped: str | None = None,
            info: dict | None = None) -> dict:
    rec = {
        "question_id": it.question_id,
        "image_id": it.image_id,
        "image": it.image_path,
        "question": it.prompt,
        "prompt": prompt,
        "answer": answer,
        "meta": it.meta,
    }
    if skipped:
        rec["skipped"] = True
        rec["skip_reason"] = skipped
    if info:
        rec["intervention_info"] = info
    rec["fingerprint"] = fingerprint
    return rec
