"""Cost of each intervention relative to plain decoding, measured side by side in one run, on every family.

    python -m scripts.bench_interventions [--models tiny_llava ...] [--batch 8] [--max-new-tokens 32]
                                          [--repeats 7] [--threads 1] [--device cpu]

The same `--batch` items (the shipped COCO images, cycled, with varied questions) are answered by every
intervention (none, head_guide, damro, vcd, pai, icd, m3id, dola) with greedy decoding of exactly
`--max-new-tokens` tokens
(min_new_tokens = max_new_tokens, so an early EOS cannot shorten one run). `--models` defaults to the tiny
model of every registered family; a method that cannot run on a family prints its reason instead of a row.
The targets are about real checkpoints on a GPU, where a method's extra view shares the batch's kernels (on
the tiny CPU models a second view costs a whole forward pass); there, name a model config:
`--models llava15_7b --device cuda` (`--dtype` overrides the config's).
Time is CPU time of this process (`time.process_time`; on a GPU, wall time after synchronising), which a
shared machine disturbs far less than wall time. Rounds are interleaved (each round runs every intervention
once, in rotated order) after one warm-up round; the ratio is the median over rounds of the per-round ratio
to `none` of the same round (paired). Targets: head_guide <= 1.15x, damro and vcd <= 1.6x, pai, icd and m3id
<= 1.3x, dola <= 1.2x (each with its shipped config: pai with its guidance, dola with 'high' layers); PASS/MISS is
printed per target (the exit code is 0 either way: timings depend on the machine).
Beam-search engines (opera) are timed in a second group against plain beam search with the same beams
(`none (beam N)`, `--beams`, default 5 as OPERA's README), same fixed length; target opera <= 1.5x.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch

from harness.errors import EXIT_CODE, HarnessError
from harness.registry import INTERVENTIONS
from harness.runner import generate_with_plan
from interventions.base import build_intervention

TARGETS = {"head_guide": 1.15, "damro": 1.6, "vcd": 1.6, "pai": 1.3, "icd": 1.3, "m3id": 1.3, "dola": 1.2}
BEAM_TARGETS = {"opera": 1.5}
BEAM_METHODS = ("opera",)
METHODS = ("head_guide", "damro", "vcd", "pai", "icd", "m3id", "dola")
QUESTIONS = ["Please describe this image in detail.", "Is there a dog in the image?",
             "What is the man holding?", "Is there a car in the image? Please answer this question with one word.",
             "Generate a short caption of this image.", "How many people are there?",
             "What color is the largest object?", "Is there a bicycle in the image?"]


def bench_models() -> list[str]:
    """The tiny model of every registered family: one bench row group per family."""
    from harness.models.tiny import tiny_names

    return tiny_names()


def model_choices() -> list[str]:
    """Every shipped model config (configs/model/*.yaml): the tiny models and the real checkpoints."""
    import configs

    return sorted(p.stem for p in (Path(configs.__file__).parent / "model").glob("*.yaml"))


def intervention_configs(methods=METHODS) -> dict:
    """name -> intervention config (the shipped config; model-dependent nulls resolve against the model)."""
    cfgs = {"none": {"name": "none"}}
    names = INTERVENTIONS.names()
    for name in methods:
        if name not in names:
            print(f"# {name}: not registered, skipped")
            continue
        cfgs[name] = {"name": name}  # build_intervention starts from configs/intervention/<name>.yaml
    return cfgs


def run_once(adapter, intervention, batch, decoding) -> tuple[float, int]:
    """CPU seconds (GPU: synchronised wall seconds) for one batch's generation under an intervention, and the
    number of tokens made."""
    cuda = adapter.device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if cuda:
        torch.cuda.synchronize()
    t0 = clock()
    with intervention.session(adapter, batch) as plan:
        ids = generate_with_plan(adapter, plan, batch, decoding)
    if cuda:
        torch.cuda.synchronize()
    return clock() - t0, int(ids.shape[1])


def bench_model(model_name: str, args) -> list[tuple[str, str, float, float | None, str]]:
    """Rows (model, intervention, median seconds, ratio to none, verdict) for one model config."""
    from PIL import Image

    from benchmarks.base import DATA_DIR
    from harness.config import group_defaults
    from harness.models.loader import load_adapter

    cfg = {**group_defaults("model", model_name), "device": args.device}
    if args.dtype:
        cfg["dtype"] = args.dtype
    if not cfg.get("tiny"):  # an unreachable hub id fails in seconds, with what to set
        from harness.hub import check_reachable

        check_reachable(cfg.get("path"))
    adapter = load_adapter(cfg)
    paths = sorted((DATA_DIR / "images").glob("*.jpg"))
    images = [Image.open(paths[i % len(paths)]).convert("RGB") for i in range(args.batch)]
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.batch)]
    batch = adapter.prepare(images, questions)
    decoding = {"strategy": "greedy", "max_new_tokens": args.max_new_tokens, "min_new_tokens": args.max_new_tokens}
    rows = time_group(model_name, adapter, batch, decoding, intervention_configs(), TARGETS, args, "none")
    if args.beams:
        beam = {**decoding, "strategy": "beam", "num_beams": args.beams}
        rows += time_group(model_name, adapter, batch, beam, intervention_configs(BEAM_METHODS), BEAM_TARGETS, args,
                           f"none (beam {args.beams})")
    return rows


def time_group(model_name, adapter, batch, decoding, cfgs, targets, args, base_label):
    """Rows of one group of interventions timed in interleaved rounds against its `none` (same decoding)."""
    ivs, rows = {}, []
    for name, cfg in cfgs.items():
        iv = build_intervention(cfg)
        try:
            iv.resolve(adapter.info)
            iv.setup(adapter)
        except (ValueError, NotImplementedError) as e:  # a method that cannot run on this family says why
            rows.append((model_name, name, float("nan"), None, f"n/a: {e}"))
            continue
        ivs[name] = iv
    names = list(ivs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for n in names:  # warm-up
        run_once(adapter, ivs[n], batch, decoding)
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            dt, new = run_once(adapter, ivs[n], batch, decoding)
            if new != args.max_new_tokens:
                print(f"# warning: {n} made {new} tokens, not {args.max_new_tokens}")
            times[n].append(dt)
    for n in names:
        med = statistics.median(times[n])
        ratio = statistics.median(t / b for t, b in zip(times[n], times["none"]))
        target = targets.get(n)
        verdict = "" if target is None else ("PASS" if ratio <= target else "MISS") + f" (target <= {target:.2f}x)"
        rows.append((model_name, base_label if n == "none" else n, med, ratio, verdict))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=None, choices=model_choices(), metavar="MODEL",
                    help="model configs (configs/model/: tiny or real checkpoints); default: every family's tiny model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--beams", type=int, default=5, help="beams of the beam-search group (opera); 0: skip it")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | auto")
    ap.add_argument("--dtype", default=None, help="override the model config's dtype (e.g. bfloat16)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"# batch {args.batch}, {args.max_new_tokens} new tokens (greedy, fixed length), "
          f"{args.repeats} interleaved rounds, median of per-round CPU-time ratios; "
          f"torch threads {torch.get_num_threads()}, device {args.device}")
    print(f"{'model':<22} {'intervention':<16} {'median s':>9} {'ratio':>7}  verdict")
    status = 0
    for model_name in args.models or bench_models():
        try:
            rows = bench_model(model_name, args)
        except HarnessError as e:  # e.g. a hub id that cannot be reached: one line, then the next model
            print(f"error: {model_name}: {e}", file=sys.stderr)
            status = EXIT_CODE
            continue
        for model, name, med, ratio, verdict in rows:
            shown = f"{ratio:6.2f}x" if ratio is not None else "     - "
            print(f"{model:<22} {name:<16} {med:9.4f} {shown}  {verdict}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
