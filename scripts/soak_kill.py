"""kill -9 soak: interrupt a tiny-model run many times at random moments, resume, compare with an uninterrupted run.

    python -m scripts.soak_kill --kills 20                     # reference run + 20 kills + resume (minutes on CPU)
    python -m scripts.soak_kill --kills 3 --reference DIR      # reuse an uninterrupted run's folder

Each round starts `run.py` on the same run folder, waits until it has written at least one new
answer, sleeps a random part of one item's time (so kills land before, during and after writes),
and sends SIGKILL. A final run resumes to the end. The soak passes when the answers (ids, order,
text) and scores equal the uninterrupted run's and no id is answered twice; it prints a table of
the rounds and exits 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["model=tiny_llava", "benchmark=smoke", "run.num_threads=1"]


def _run_cmd(run_dir: Path, store: Path, batch_size: int) -> list[str]:
    return [sys.executable, "run.py", *ARGS, f"run.batch_size={batch_size}", f"hydra.run.dir={run_dir}",
            f"results_store={store}"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def uninterrupted(run_dir: Path, store: Path, batch_size: int) -> float:
    """Run to the end without interruption; returns the wall time."""
    t0 = time.time()
    subprocess.run(_run_cmd(run_dir, store, batch_size), cwd=ROOT, env=_env(), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.time() - t0


def kill_round(run_dir: Path, store: Path, batch_size: int, rng: random.Random, max_delay_s: float,
               startup_s: float | None, deadline_s: float = 600) -> dict:
    """One round: start run.py, SIGKILL it at a random moment, and report what the answers file looks like.

    With probability 0.3 (once the start-up time is known) the kill lands during start-up, before any
    answer; otherwise it lands a random 0..max_delay_s after the run wrote its next answer.
    """
    answers = run_dir / "answers.jsonl"
    before = _lines(answers)
    during_startup = startup_s is not None and rng.random() < 0.3
    proc = subprocess.Popen(_run_cmd(run_dir, store, batch_size), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    if during_startup:
        delay = rng.uniform(0, startup_s)
        time.sleep(delay)
    else:
        while proc.poll() is None and _lines(answers) <= before and time.time() - t0 < deadline_s:
            time.sleep(0.01)
        first_answer_s = time.time() - t0
        delay = rng.uniform(0, max_delay_s)
        time.sleep(delay)
    finished = proc.poll() is not None
    if not finished:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    data = answers.read_bytes() if answers.exists() else b""
    return {"before": before, "after": data.count(b"\n"), "torn_tail": bool(data) and not data.endswith(b"\n"),
            "when": "start-up" if during_startup else "generating", "delay_s": round(delay, 3),
            "finished_first": finished, "first_answer_s": None if during_startup else first_answer_s}


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its verdict; 0 when the resumed answers equal the uninterrupted ones."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--max-delay", type=float, default=0.3, help="longest wait after an answer before the kill (s)")
    ap.add_argument("--reference", type=Path, help="folder of an uninterrupted run with the same settings")
    ap.add_argument("--workdir", type=Path, help="where to put the runs (default: a temporary folder)")
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="soak_kill_"))
    work.mkdir(parents=True, exist_ok=True)
    ref = args.reference
    if ref is None:
        ref = work / "reference"
        print(f"uninterrupted run: {uninterrupted(ref, work / 'ref_results.jsonl', args.batch_size):.1f} s")
    ref_answers = _records(ref / "answers.jsonl")
    startup_s = None
    run_dir, store = work / "soak", work / "soak_results.jsonl"
    rng = random.Random(args.seed)
    rounds = []
    for k in range(args.kills):
        t0 = time.time()
        r = kill_round(run_dir, store, args.batch_size, rng, args.max_delay, startup_s)
        if r["first_answer_s"] is not None:
            startup_s = r["first_answer_s"] if startup_s is None else min(startup_s, r["first_answer_s"])
        r["round"], r["wall_s"] = k + 1, round(time.time() - t0, 1)
        rounds.append(r)
        where = (f"{r['delay_s']:.2f} s into start-up" if r["when"] == "start-up"
                 else f"{r['delay_s']:.2f} s after an answer")
        print(f"kill {k + 1:2d}: answers {r['before']:2d} -> {r['after']:2d} lines, killed {where}, "
              f"half-written line: {r['torn_tail']}" + (" (the run had finished)" if r["finished_first"] else ""),
              flush=True)
        if r["finished_first"]:
            break
    uninterrupted(run_dir, store, args.batch_size)
    got = _records(run_dir / "answers.jsonl")
    ids = [r["question_id"] for r in got]
    same_answers = [(r["question_id"], r["answer"]) for r in got] == [(r["question_id"], r["answer"])
                                                                       for r in ref_answers]
    same_scores = (json.loads((run_dir / "scores.json").read_text())
                   == json.loads((ref / "scores.json").read_text()))
    kills = sum(not r["finished_first"] for r in rounds)
    torn = sum(r["torn_tail"] for r in rounds)
    early = sum(r["when"] == "start-up" and not r["finished_first"] for r in rounds)
    ok = same_answers and same_scores and len(ids) == len(set(ids))
    print(f"\n{kills} kills ({early} during start-up, {torn} left a half-written line), {len(got)} answers, {len(ids) - len(set(ids))} "
          f"duplicated; answers equal the uninterrupted run: {same_answers}; scores equal: {same_scores}")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
