"""Compare two runs' answers with a pairwise LLM judge (GPT-4V-aided evaluation).

    halluc-bench-judge judge.answers_a=RUN_A/answers.jsonl \
        judge.answers_b=RUN_B/answers.jsonl judge.image_root=/coco/val2014 judge.names=[base,method]

Writes judgments.jsonl and scores.json to judge.out_dir (the Hydra run folder by default). Exits
with status 1 when every judge request failed, or (judge.strict=true) when any judgment failed.
"""
from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from harness.judge import JudgeUnavailableError, run_judge
from harness.judge.stats import judge_table

log = logging.getLogger("judge_pairwise")


@hydra.main(config_path="pkg://configs", config_name="judge", version_base=None)
def main(cfg: DictConfig) -> None:
    """Run the judge configured under ``judge``; exit non-zero when it failed (see the module doc)."""
    jc = OmegaConf.to_container(cfg.judge, resolve=True, throw_on_missing=True)
    try:
        scores = run_judge(jc)
    except JudgeUnavailableError as e:
        log.error("%s", e)
        sys.exit(1)
    print(f"output directory: {jc.get('out_dir')}\n{judge_table(scores)}")
    if jc.get("strict") and scores["failures"]:
        log.error("%d judgments failed (strict mode)", len(scores["failures"]))
        sys.exit(1)


if __name__ == "__main__":
    main()
