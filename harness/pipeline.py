"""One job: generate (sharded, resumable) or take an answers file, score it, store and print the result."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.errors import HarnessError, InputFileError, NothingToScoreError
from harness.fingerprint import make_fingerprint
from harness.locks import exclusive_writer
from harness.provenance import run_provenance, write_provenance
from harness.records import atomic_write_text
from harness.registry import BENCHMARKS
from harness.results import add_result, read_results, result_row, setting_label
from harness.sharding import (ANSWERS, already_scored, mark_scored, merge_shards_locked, run_lock, shard_file,
                              shard_items, shard_world)
from harness.stats import score_statistics
from harness.config import validate
from harness.validate import check_outputs

log = logging.getLogger("halluc_bench")


def plain(node: Any) -> Any:
    """A config node as plain Python containers."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_benchmark(cfg: dict, judge: dict | None = None):
    """The benchmark object for a benchmark config node (judged benchmarks also get the ``judge`` node).

    The judge is kept out of the benchmark node, so it is not part of the answers' fingerprint.
    """
    cls = BENCHMARKS.get(cfg["name"])
    return cls({**cfg, "judge": judge} if judge is not None and hasattr(cls, "judge_settings") else cfg)


def selected_items(bench: Any, limit: int | None) -> list:
    """The benchmark's items, cut to the first `limit` when given."""
    items = bench.items()
    return items[: int(limit)] if limit else items


def score_and_store(bench: Any, records: list[dict], source: str, run_dir: Path, cfg: dict,
                    intervention: Any, fingerprint: dict | None, expected: list | None = None) -> dict:
    """Score records, write scores.json in the run dir, add a results-store row; returns the scores."""
    skipped = [r for r in records if r.get("skipped")]
    scored = [r for r in records if not r.get("skipped")]
    if not scored:
        why = (f"all {len(records)} items were skipped (missing images, see skip_reason in {source}); "
               "set the benchmark's image folder") if records else f"{source} holds no answer records"
        raise NothingToScoreError(f"nothing to score: {why}; no scores or results row written")
    if expected is not None:
        keep = {str(r["question_id"]) for r in scored}
        bench.restrict_to([q for q in expected if str(q) in keep])
    scores = bench.score(scored, source=source)
    units_path = score_statistics(bench, scored, source, scores, run_dir)
    if skipped:
        scores["skipped"] = len(skipped)
    atomic_write_text(run_dir / "scores.json", json.dumps(scores, indent=2, default=str) + "\n")
    setting = "" if intervention is None else setting_label(
        cfg["decoding"], cfg.get("seed"), cfg["run"].get("limit") or cfg["benchmark"].get("limit"))
    fp = fingerprint or next((r.get("fingerprint") for r in scored if isinstance(r.get("fingerprint"), dict)), None)
    prov = run_provenance(bench, (fp or {}).get("decoding"), (fp or {}).get("seed"), fp)
    write_provenance(run_dir, bench, prov)
    row = result_row(cfg["model"], intervention, bench, scores, fingerprint, source, run_dir, setting, prov,
                     units_path)
    add_result(cfg["results_store"], row)
    return scores


def answers_label(path: str) -> str:
    """A display name for an external answers file: its stem, or its folder's name for answers.jsonl."""
    p = Path(path)
    return p.parent.name if p.stem == "answers" else p.stem


def run_job(cfg: DictConfig, run_dir: Path) -> dict | None:
    """Run the configured job in `run_dir`; returns the scores, or None for a shard that does not score."""
    c = plain(cfg)
    validate(c)  # every range rule of the typed schema, before anything loads
    if not c.get("answers"):
        if not c["model"].get("tiny"):  # before anything heavy loads: an unreachable hub id fails in seconds
            from harness.hub import check_reachable

            check_reachable(c["model"].get("path"))
    bench = build_benchmark(c["benchmark"], c.get("judge"))
    check_outputs(c, run_dir)
    if c.get("answers"):
        return _score_only(bench, c, run_dir)
    return _generate_and_score(bench, c, run_dir)


def _score_only(bench: Any, c: dict, run_dir: Path) -> dict:
    """Score an existing answers file (no model), store and print the result."""
    records = bench.in_split(bench.load_answers(c["answers"]))
    if not records:
        raise InputFileError(f"answers={c['answers']} holds no answer records; nothing scored, no results row")
    c["model"] = {"name": c.get("answers_name") or answers_label(c["answers"])}
    scores = score_and_store(bench, records, str(c["answers"]), run_dir, c, None, None)
    _print_scores(bench, scores, c, run_dir)
    return scores


def _generate_and_score(bench: Any, c: dict, run_dir: Path) -> dict | None:
    """Answer this process's shard (resuming), then merge and score when this process completes the set."""
    from interventions.base import build_intervention

    intervention = build_intervention(c["intervention"])
    if intervention.name != "none":  # model-dependent defaults, so labels and fingerprints say what runs
        from harness.models.loader import load_model_info

        intervention.resolve(load_model_info(c["model"]))
    decoding = dict(c["decoding"])
    if decoding["max_new_tokens"] is None:
        decoding["max_new_tokens"] = c["benchmark"]["max_new_tokens"]
    fingerprint = make_fingerprint(c["model"], intervention, decoding, c["seed"], c["benchmark"])
    items = selected_items(bench, c["run"].get("limit"))
    if not items:
        raise NothingToScoreError(f"benchmark {bench.label()} has no items to answer")
    n_shards, shard_id = shard_world(c["run"].get("num_shards"), c["run"].get("shard_id"))
    mine = shard_items(items, n_shards, shard_id)
    out = shard_file(run_dir, n_shards, shard_id)

    from harness.models.loader import load_adapter
    from harness.runner import generate_answers

    expected = [it.question_id for it in items]
    with exclusive_writer(out):
        _check_fingerprint(out, fingerprint)
        generate_answers(mine, out, lambda: load_adapter(c["model"]), intervention, decoding, fingerprint,
                         batch_size=int(c["run"]["batch_size"]), seed=int(c["seed"]),
                         skip_missing=bool(c["run"].get("skip_missing")),
                         desc=f"{c['model']['name']} {bench.label()} shard {shard_id + 1}/{n_shards}")
        if n_shards == 1:
            return _score_run(bench, out, run_dir, c, intervention, fingerprint, expected)
    # one process merges and scores each complete set of shard answers; the writer lock on answers.jsonl
    # refuses while a single-process run in the same folder writes it
    with run_lock(run_dir), exclusive_writer(run_dir / ANSWERS):
        merged = merge_shards_locked(run_dir, n_shards, expected)
        if merged is None:
            print(f"shard {shard_id + 1}/{n_shards} finished; the last shard to finish merges and scores")
            return None
        if already_scored(merged):
            print(f"shard {shard_id + 1}/{n_shards} finished; {merged} is already merged and scored "
                  f"({run_dir / 'scores.json'})")
            return None
        scores = _score_run(bench, merged, run_dir, c, intervention, fingerprint, expected)
        mark_scored(merged)
        return scores


def _score_run(bench: Any, answers: Path, run_dir: Path, c: dict, intervention: Any, fingerprint: dict,
               expected: list) -> dict:
    from harness.records import read_jsonl

    records = read_jsonl(answers)
    scores = score_and_store(bench, records, str(answers), run_dir, c, intervention, fingerprint,
                             expected=expected)
    _print_scores(bench, scores, c, run_dir)
    return scores


def _check_fingerprint(out: Path, fingerprint: dict) -> None:
    """Refuse to resume into an answers file written under a different configuration."""
    if not out.exists() or out.stat().st_size == 0:
        return
    with open(out, encoding="utf-8") as fh:
        first = fh.readline()
    try:
        old = json.loads(first).get("fingerprint", {}).get("hash")
    except json.JSONDecodeError:
        return
    if old and old != fingerprint["hash"]:
        raise HarnessError(f"{out} was written by a run with another configuration (fingerprint {old}, "
                           f"now {fingerprint['hash']}); use another hydra.run.dir or remove the file")


def _print_scores(bench: Any, scores: dict, c: dict, run_dir: Path) -> None:
    from harness.leaderboard import benchmark_markdown
    from harness.score_table import scores_table

    rows = [r for r in read_results(c["results_store"]) if r["benchmark"] == bench.label()]
    print(f"\nrun directory: {run_dir}")
    print(f"\n{bench.label()} scores:\n{scores_table(scores)}")
    print("\nleaderboard rows:\n" + benchmark_markdown(rows, significance=False))
