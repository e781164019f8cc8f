"""Per-token attention and relevancy maps of an answer, in a self-contained HTML report.

    python scripts/diagnose.py model=tiny_llava image=PATH question="Describe this image."
    python scripts/diagnose.py model=llava15_7b answers=RUN/answers.jsonl limit=20 image_root=/coco/val2014

Single mode writes one report (``out`` or ``<run dir>/report.html``): the answer is generated greedily,
or teacher-forced on ``answer=...``. Answers mode writes ``index.html`` and ``items/*.html`` (one per
record of a run's answers file, teacher-forced on the recorded answer) into ``out`` or the run dir.
Options: configs/diagnose.yaml.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import harness.cli.run  # noqa: E402,F401  (registers the run-directory slug resolver and the typed schemas)

log = logging.getLogger("diagnose")


def _resolve_image(rec: dict, image_root: str | None) -> str | None:
    """A record's image: ``image`` when it exists, else ``image_root`` / (``image``'s name or ``image_id``)."""
    img = rec.get("image")
    if img and Path(img).is_file():
        return str(img)
    if image_root:
        for name in (img, rec.get("image_id")):
            if name:
                cand = Path(image_root) / Path(str(name)).name
                if cand.is_file():
                    return str(cand)
    return str(img) if img else None


def _item_name(i: int, qid: object) -> str:
    return f"{i:04d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', str(qid))[:60]}.html"


def diagnose_one(adapter, cfg: DictConfig, image_path: str, question: str, answer: str | None, out: Path,
                 title: str | None = None, extra: dict | None = None) -> dict:
    """Trace one (image, question[, answer]) and write its report; returns the report payload."""
    from harness.diagnosis.maps import trace_answer
    from harness.diagnosis.report import render_report, report_payload
    from harness.images import load_image

    image = load_image(image_path, title or image_path)
    trace = trace_answer(adapter, image, question, answer=answer, max_new_tokens=int(cfg.max_new_tokens),
                         relevancy=bool(cfg.relevancy), lens_top_k=int(cfg.top_k))
    layers = OmegaConf.to_container(cfg.layers) if OmegaConf.is_config(cfg.layers) else cfg.layers
    payload = report_payload(trace, layers=layers, image_path=image_path, title=title,
                             ground_truth=str(cfg.chair_ground_truth), extra=extra)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(payload), encoding="utf-8")
    return payload


@hydra.main(config_path="../configs", config_name="diagnose", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Write a report (``image=``) or an index of reports (``answers=``)."""
    import torch
    from hydra.core.hydra_config import HydraConfig

    from harness.models.loader import load_adapter

    if cfg.get("num_threads"):
        torch.set_num_threads(int(cfg.num_threads))
    if bool(cfg.image) == bool(cfg.answers):
        raise SystemExit("give exactly one of image=PATH (one report) or answers=PATH (an index of reports)")
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    adapter = load_adapter(OmegaConf.to_container(cfg.model, resolve=True))

    if cfg.image:
        out = Path(cfg.out) if cfg.out else run_dir / "report.html"
        diagnose_one(adapter, cfg, str(cfg.image), str(cfg.question), cfg.answer, out)
        log.info("wrote %s", out)
        print(out)
        return

    from harness.diagnosis.report import marked_answer_html, render_index
    from harness.images import MissingImageError
    from harness.records import normalise_record, read_jsonl

    records = read_jsonl(cfg.answers)
    records = [r for r in records if not r.get("skipped")]
    if cfg.limit is not None:
        records = records[:int(cfg.limit)]
    out_dir = Path(cfg.out) if cfg.out else run_dir
    entries = []
    for i, raw in enumerate(records):
        rec = normalise_record(raw, where=f"{cfg.answers}, record {i + 1}")
        fp_model = ((rec.get("fingerprint") or {}).get("model") or {}).get("name")
        if fp_model and fp_model != cfg.model.name:
            log.warning("record %s was answered by %s, diagnosing with %s", rec["question_id"], fp_model,
                        cfg.model.name)
        image_path = _resolve_image(rec, cfg.image_root)
        question = rec.get("question") or rec.get("prompt") or ""
        href = f"items/{_item_name(i, rec['question_id'])}"
        try:
            payload = diagnose_one(adapter, cfg, image_path, str(question), str(rec["answer"] or ""),
                                   out_dir / href, title=f"{rec['question_id']}: {question}",
                                   extra={"question_id": rec["question_id"], "recorded answer": rec["answer"]})
        except (MissingImageError, ValueError) as e:  # a missing image, or an empty answer
            err = (f"image not found: {image_path} (set image_root=FOLDER)" if isinstance(e, MissingImageError)
                   else str(e))
            log.warning("record %s skipped: %s", rec["question_id"], err)
            entries.append({"href": None, "question_id": rec["question_id"], "image": image_path,
                            "question": question, "error": err})
            continue
        chair = payload.get("chair") or {}
        entries.append({"href": href, "question_id": rec["question_id"], "image": image_path,
                        "question": question, "answer_html": marked_answer_html(payload),
                        "hallucinated": chair.get("hallucinated", [])})
        log.info("[%d/%d] %s", i + 1, len(records), out_dir / href)
    index = out_dir / "index.html"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(render_index(entries, title=f"Diagnosis: {cfg.model.name} on {Path(cfg.answers).name}"),
                     encoding="utf-8")
    log.info("wrote %s", index)
    print(index)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
