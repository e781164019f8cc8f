"""Compare two runs' answers with a pairwise LLM judge (GPT-4V-aided evaluation).

    python scripts/judge_pairwise.py judge.answers_a=RUN_A/answers.jsonl \
        judge.answers_b=RUN_B/answers.jsonl judge.image_root=/coco/val2014 judge.names=[base,method]

Writes judgments.jsonl and scores.json to judge.out_dir (the Hydra run folder by default).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.judge import run_judge  # noqa: E402
from harness.judge.stats import judge_table  # noqa: E402

log = logging.getLogger("judge_pairwise")


@hydra.main(config_path="../configs", config_name="judge", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run the judge configured under ``judge`` and exit non-zero in strict mode on failures."""
    jc = OmegaConf.to_container(cfg.judge, resolve=True, throw_on_missing=True)
    strict = bool(jc.pop("strict", False))
    scores = run_judge(jc)
    print(f"output directory: {jc.get('out_dir')}\n{judge_table(scores)}")
    if strict and scores["failures"]:
        log.error("%d judgments failed (strict mode)", len(scores["failures"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
