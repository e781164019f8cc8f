"""Whole-process cost of a CHAIR score-only run against a reference-style scorer, measured side by side.

    python scripts/bench_scoring.py [--sizes 500 5000 50000] [--rounds 3] [--distinct] [--workers N]

For each size, a caption file is synthesised from the shipped caption logs (tests/data/chair_captions:
~5,000 distinct LVLM captions): caption i is the (i mod pool)-th distinct caption, so sizes above the pool
repeat captions (``--distinct``: repeats get their sentences rotated, so every caption is new text), each
on its own COCO image of the ground truth. Two processes score it in every round, in alternating order:

* ours: ``python run.py benchmark=chair answers=FILE`` (default bootstrap, results row, leaderboard print);
* reference: this script's ``--reference FILE``, the ``caption_to_words`` / ``compute_chair`` algorithm of
  less-is-more's CHAIR-eval/chair.py (= OPERA's / DAMRO's) written out here: per caption
  ``nltk.word_tokenize``, ``nltk.pos_tag``, ``WordNetLemmatizer().lemmatize`` with the tag's POS, the
  double-word merge, the toilet-seat rule, and the per-caption records; the ground truth is the shipped
  lemma_pos imid_to_objects JSON (the reference reads its own cache), nltk data the shipped folder.

Metrics must be identical (CHAIRs, CHAIRi, Recall as fractions bit for bit, the mention counts, and Len as
merged words per caption); the run stops otherwise. CPU time and peak RSS are those of each child
(``os.wait4``: user + system seconds of the child and its reaped workers; ru_maxrss of the largest).
Printed per size: the median over rounds of the per-round ratio reference CPU / ours CPU (paired),
medians of both, wall seconds, and peak RSS of both. Goals (issue 14): >= 10x at 5,000 captions, >= 20x at
50,000, faster at 500, peak memory no higher than the reference's; PASS/MISS printed (exit code 0 either
way: timings depend on the machine).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTION_LOGS = ROOT / "tests" / "data" / "chair_captions" / "less_is_more_table1"
CHAIR_DATA = ROOT / "benchmarks" / "data" / "chair"
GOALS = {500: 1.0, 5000: 10.0, 50000: 20.0}


# ------------------------------------------------------------------ the reference-style scorer (child process)
def reference_score(path: str) -> dict:
    """CHAIR of a caption JSONL file the way the reference chair.py computes it; returns overall metrics + counts."""
    import nltk
    from nltk.corpus import wordnet
    from nltk.stem import WordNetLemmatizer

    nltk.data.path.insert(0, str(ROOT / "benchmarks" / "data" / "nltk_data"))
    vocab = json.loads((CHAIR_DATA / "chair_vocab.json").read_text())
    inverse_synonym_dict, double_word_dict = vocab["inverse_synonym_dict"], vocab["double_word_dict"]
    mscoco_objects = list(inverse_synonym_dict)
    gt = {int(k): set(v) for k, v in json.loads((CHAIR_DATA / "imid_to_objects_lemma_pos.json").read_text()).items()}

    def get_wordnet_pos(tag):
        return {"J": wordnet.ADJ, "V": wordnet.VERB, "N": wordnet.NOUN, "R": wordnet.ADV}.get(tag[:1])

    def caption_to_words(caption):
        words = nltk.word_tokenize(caption.lower())
        tagged_sent = nltk.pos_tag(words)
        lemmas_sent = []
        wnl = WordNetLemmatizer()
        for tag in tagged_sent:
            wordnet_pos = get_wordnet_pos(tag[1]) or wordnet.NOUN
            lemmas_sent.append(wnl.lemmatize(tag[0], pos=wordnet_pos))
        words = lemmas_sent
        i, double_words, idxs = 0, [], []
        while i < len(words):
            idxs.append(i)
            double_word = " ".join(words[i:i + 2])
            if double_word in double_word_dict:
                double_words.append(double_word_dict[double_word])
                i += 2
            else:
                double_words.append(words[i])
                i += 1
        words = double_words
        if ("toilet" in words) & ("seat" in words):
            words = [word for word in words if word != "seat"]
        idxs = [idxs[idx] for idx, word in enumerate(words) if word in set(mscoco_objects)]
        words = [word for word in words if word in set(mscoco_objects)]
        node_words = [inverse_synonym_dict[word] for word in words]
        return words, node_words, idxs, double_words

    caps = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    num_caps = num_hallucinated_caps = hallucinated_word_count = coco_word_count = len_caps = 0.0
    num_recall_gt_objects = num_gt_objects = 0.0
    sentences = []
    for rec in caps:
        cap, imid = rec["caption"], int(rec["image_id"])
        words, node_words, idxs, raw_words = caption_to_words(cap)
        gt_objects = gt[imid]
        cap_dict = {"image_id": imid, "caption": cap, "mscoco_hallucinated_words": [],
                    "mscoco_gt_words": list(gt_objects), "mscoco_generated_words": list(node_words),
                    "hallucination_idxs": [], "words": raw_words}
        coco_word_count += len(node_words)
        hallucinated, recall_gt_objects = False, set()
        for word, node_word, idx in zip(words, node_words, idxs):
            if node_word not in gt_objects:
                hallucinated_word_count += 1
                cap_dict["mscoco_hallucinated_words"].append((word, node_word))
                cap_dict["hallucination_idxs"].append(idx)
                hallucinated = True
            else:
                recall_gt_objects.add(node_word)
        num_caps += 1
        len_caps += len(raw_words)
        num_hallucinated_caps += hallucinated
        num_gt_objects += len(gt_objects)
        num_recall_gt_objects += len(recall_gt_objects)
        cap_dict["metrics"] = {"CHAIRs": int(hallucinated),
                               "CHAIRi": len(cap_dict["mscoco_hallucinated_words"]) / len(words) if words else 0.0,
                               "Recall": len(recall_gt_objects) / len(gt_objects) if gt_objects else 0.0}
        sentences.append(cap_dict)
    return {"CHAIRs": num_hallucinated_caps / num_caps, "CHAIRi": hallucinated_word_count / coco_word_count,
            "Recall": num_recall_gt_objects / num_gt_objects, "Len": len_caps / num_caps, "n": int(num_caps),
            "n_mentions": int(coco_word_count), "n_hallucinated": int(hallucinated_word_count)}


# ------------------------------------------------------------------ data and measurement (parent process)
def caption_pool() -> list[str]:
    """The distinct captions of the shipped caption logs, in file order."""
    caps = [json.loads(line)["text"] for p in sorted(CAPTION_LOGS.glob("*.jsonl")) for line in p.read_text().splitlines()]
    return list(dict.fromkeys(caps))


def rotate_sentences(caption: str, k: int) -> str:
    """The caption with its sentences rotated left by k (a new text made of the same sentences)."""
    parts = [s for s in re.split(r"(?<=[.!?])\s+", caption.strip()) if s]
    k %= max(1, len(parts))
    return " ".join(parts[k:] + parts[:k])


def synthesise(n: int, path: Path, distinct: bool) -> int:
    """Write n caption records (image_id, caption) on distinct COCO images; returns the distinct caption count."""
    pool = caption_pool()
    ids = sorted(int(k) for k in json.loads((CHAIR_DATA / "imid_to_objects_lemma_pos.json").read_text()))
    if n > len(ids):
        raise SystemExit(f"--sizes: at most {len(ids)} captions (one per ground-truth image)")
    caps = []
    for i in range(n):
        cap, rnd = pool[i % len(pool)], i // len(pool)
        caps.append(rotate_sentences(cap, rnd) if distinct and rnd else cap)
    with open(path, "w", encoding="utf-8") as fh:
        for imid, cap in zip(ids, caps):
            fh.write(json.dumps({"image_id": imid, "caption": cap}) + "\n")
    return len(set(caps))


def measure(cmd: list[str], env: dict) -> tuple[float, float, int, str]:
    """(CPU seconds, wall seconds, peak RSS in KiB, stdout) of one child process run to completion."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout[-2000:]}\n{stderr[-3000:]}")
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss, stdout


def check_same(ours: dict, ref: dict, n: int) -> None:
    """Stop unless our scores.json equals the reference-style metrics (the fractions bit for bit)."""
    want = {k: 100.0 * ref[k] for k in ("CHAIRs", "CHAIRi", "Recall")}
    want.update(Len=ref["Len"], n=ref["n"], n_mentions=ref["n_mentions"], n_hallucinated=ref["n_hallucinated"])
    got = {k: ours[k] for k in want}
    if got != want or ref["n"] != n:
        raise SystemExit(f"metrics differ at {n} captions: ours {got}, reference {want}")


def bench_size(n: int, args, env: dict, work: Path) -> dict:
    answers = work / f"captions_{n}.jsonl"
    n_distinct = synthesise(n, answers, args.distinct)
    ours_cmd = [sys.executable, "run.py", "benchmark=chair", f"answers={answers}", f"results_store={work / 'r.jsonl'}"]
    if args.workers is not None:
        ours_cmd.append(f"benchmark.workers={args.workers}")
    ref_cmd = [sys.executable, str(Path(__file__).resolve()), "--reference", str(answers)]
    res = {"ours": [], "ref": []}
    for r in range(args.rounds):
        run_dir = work / f"run_{n}_{r}"
        order = [("ours", ours_cmd + [f"hydra.run.dir={run_dir}"]), ("ref", ref_cmd)]
        for who, cmd in order if r % 2 == 0 else order[::-1]:
            cpu, wall, rss, out = measure(cmd, env)
            res[who].append((cpu, wall, rss, out))
        ref = json.loads(res["ref"][-1][3].strip().splitlines()[-1])
        check_same(json.loads((run_dir / "scores.json").read_text()), ref, n)
        (oc, ow, orss, _), (rc, rw, rrss, _) = res["ours"][-1], res["ref"][-1]
        print(f"#   {n} captions, round {r + 1}: ours {oc:.2f} s CPU ({ow:.1f} s wall, {orss / 1024:.0f} MiB), "
              f"reference {rc:.2f} s CPU ({rw:.1f} s wall, {rrss / 1024:.0f} MiB): {rc / oc:.2f}x", flush=True)
    ratios = [rc / oc for (oc, *_), (rc, *_) in zip(res["ours"], res["ref"])]
    med = {w: {"cpu": statistics.median(x[0] for x in v), "wall": statistics.median(x[1] for x in v),
               "rss_mib": max(x[2] for x in v) / 1024} for w, v in res.items()}
    return {"n": n, "distinct": n_distinct, "ratio": statistics.median(ratios), "ratios": ratios, **med}


def main() -> None:
    """Benchmark (parent) or score one file the reference's way (child, --reference FILE)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[500, 5000, 50000])
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds per size (alternating order)")
    ap.add_argument("--distinct", action="store_true", help="repeated captions get rotated sentences")
    ap.add_argument("--workers", type=int, default=None, help="benchmark.workers of our runs (default: null)")
    ap.add_argument("--reference", metavar="FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.reference:
        print(json.dumps(reference_score(args.reference)))
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"# CHAIR score-only, whole process; {args.rounds} paired rounds per size; CPU = user + sys of the child "
          f"(and its workers); ratio = median of per-round reference CPU / ours CPU; metrics identical each round")
    print(f"{'captions':>8} {'distinct':>8} {'ours cpu s':>10} {'ref cpu s':>10} {'ratio':>7} {'ours wall':>9} "
          f"{'ref wall':>8} {'ours MiB':>8} {'ref MiB':>8}  verdict")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            r = bench_size(n, args, env, Path(tmp))
            goal = GOALS.get(n)
            speed = "" if goal is None else ("PASS" if r["ratio"] > goal else "MISS") + f" (>= {goal:g}x)"
            mem = "PASS" if r["ours"]["rss_mib"] <= r["ref"]["rss_mib"] else "MISS"
            print(f"{n:>8} {r['distinct']:>8} {r['ours']['cpu']:>10.2f} {r['ref']['cpu']:>10.2f} {r['ratio']:>6.2f}x "
                  f"{r['ours']['wall']:>9.2f} {r['ref']['wall']:>8.2f} {r['ours']['rss_mib']:>8.0f} "
                  f"{r['ref']['rss_mib']:>8.0f}  speed {speed}; memory {mem}  "
                  f"(per-round ratios {', '.join(f'{x:.2f}' for x in r['ratios'])})", flush=True)


if __name__ == "__main__":
    main()
