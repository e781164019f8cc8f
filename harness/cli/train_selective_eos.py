"""LoRA fine-tuning with Selective EOS Supervision ("Less is More", Yue et al., ACL 2024) on LLaVA-style data.

    halluc-bench-train-eos --model llava15_7b --data detail_23k.json \\
        --image-folder coco/train2017 --output outputs/eos/llava15-7b-selective-23k --set dtype=bfloat16
    # then evaluate with: python run.py model=llava15_7b model.adapter=outputs/eos/llava15-7b-selective-23k ...

    # smoke run on the bundled data and the tiny offline model (CPU, seconds):
    halluc-bench-train-eos --model tiny_llava --max-steps 3 --batch-size 2 --output /tmp/eos-tiny

The model comes from a model config (`configs/model/<name>.yaml` or a YAML path, `--set key=value` to
override: `path=`, `dtype=`, `device=`, `adapter=` (merged before training)). Data: a LLaVA
conversation JSON (see `harness/eos/data.py`; default: `benchmarks/data/eos/coco6_conversations.json`).

Defaults follow the reference run (yuezih/less-is-more `LLaVA/scripts/v1_5/selective_eos_finetune.sh` with
LLaVA's `train.py`): LoRA r=128, alpha=256, dropout 0.05 on every Linear of the language model's decoder
layers (LLaVA's `find_all_linear_names`: no vision tower, projector or lm_head), lr 2e-4, the projector
fully trained at lr 2e-6 (`--mm_projector_lr`; saved here as a peft `modules_to_save` so the adapter holds
it), weight decay 0, warmup ratio 0.03, cosine schedule, 1 epoch, max length 2048, per-device batch 16.
The reference used 8 GPUs (global batch 128): use `--grad-accum 8` for the same effective batch on one device.
`--loss standard` trains with the ordinary cross-entropy instead (the baseline).

Writes OUTPUT/adapter_config.json + adapter_model.safetensors (peft; loadable with `model.adapter=OUTPUT`),
OUTPUT/train_args.json and OUTPUT/train_log.jsonl (per optimizer step: loss, standard CE, lr).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from harness.eos.data import add_data_arguments

    add_data_arguments(ap)
    ap.add_argument("--output", required=True, help="adapter output folder")
    ap.add_argument("--loss", choices=["selective", "standard"], default="selective")
    ap.add_argument("--lora-r", type=int, default=128)
    ap.add_argument("--lora-alpha", type=float, default=256)
    ap.add_argument("--lora-dropout", type=float, default=0.05)
    ap.add_argument("--target-modules", default="auto",
                    help="'auto' (every Linear in the decoder layers) or a peft regex / comma-separated names")
    ap.add_argument("--mm-projector-lr", type=float, default=2e-6,
                    help="learning rate of the fully trained projector; 0 freezes it")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup-ratio", type=float, default=0.03)
    ap.add_argument("--scheduler", default="cosine", help="a transformers scheduler name (cosine, linear, constant...)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--max-steps", type=int, default=None, help="optimizer steps (overrides --epochs)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=2048)
    ap.add_argument("--max-grad-norm", type=float, default=1.0, help="clip (transformers Trainer default); 0: off")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--log-every", type=int, default=1)
    return ap.parse_args(argv)


def decoder_linear_regex(adapter) -> str:
    """A peft target_modules regex for every nn.Linear inside the decoder layers (LLaVA's
    `find_all_linear_names` restricted to the language model, which is what it selects for LLaVA)."""
    layers_path = adapter.site_path("decoder_layers")
    layers = adapter.decoder_layers()
    rel = sorted({name for layer in layers for name, mod in layer.named_modules()
                  if isinstance(mod, torch.nn.Linear)})
    if not rel:
        raise ValueError(f"no nn.Linear modules under {layers_path!r}")
    return rf"{re.escape(layers_path)}\.\d+\.(?:{'|'.join(re.escape(r) for r in rel)})"


def main(argv: list[str] | None = None) -> int:
    """Train, save the adapter, return 0."""
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    from peft import LoraConfig, get_peft_model
    from transformers import get_scheduler

    from harness.eos.data import ConversationDataset, load_model_config, load_records, split_labels, to_model
    from harness.eos.selective_loss import selective_eos_loss, standard_lm_loss
    from harness.models.loader import load_adapter, quiet_peft

    torch.manual_seed(args.seed)
    cfg = load_model_config(args.model, args.set)
    adapter = load_adapter(cfg)
    eos = adapter.tokenizer.eos_token_id
    device = adapter.device
    records = load_records(args.data)
    dataset = ConversationDataset(adapter, records, args.image_folder, args.max_length)

    target = decoder_linear_regex(adapter) if args.target_modules == "auto" else (
        args.target_modules.split(",") if "," in args.target_modules else args.target_modules)
    projector = adapter.site_path("projector") if args.mm_projector_lr > 0 else None
    lora_cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                          target_modules=target, bias="none", task_type="CAUSAL_LM",
                          modules_to_save=[projector] if projector else None)
    torch.manual_seed(args.seed)
    with quiet_peft():
        model = get_peft_model(adapter.model, lora_cfg)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    base = model.get_base_model()

    lora_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    other_params = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    groups = [{"params": lora_params, "lr": args.lr, "weight_decay": args.weight_decay}]
    if other_params:
        groups.append({"params": other_params, "lr": args.mm_projector_lr, "weight_decay": args.weight_decay})
    optimizer = torch.optim.AdamW(groups)

    gen = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, generator=gen,
                                         collate_fn=dataset.collate)
    steps_per_epoch = max(1, math.ceil(len(loader) / args.grad_accum))
    total_steps = args.max_steps or max(1, math.ceil(steps_per_epoch * args.epochs))
    scheduler = get_scheduler(args.scheduler, optimizer, num_warmup_steps=math.ceil(args.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    loss_fn = (lambda lg, lb: selective_eos_loss(lg, lb, eos)) if args.loss == "selective" else standard_lm_loss

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    n_trainable = sum(p.numel() for g in groups for p in g["params"])
    (out / "train_args.json").write_text(json.dumps({**vars(args), "model_config": cfg, "eos_token_id": eos,
                                                     "target_modules": target, "modules_to_save": projector,
                                                     "total_steps": total_steps, "trainable_params": n_trainable,
                                                     "num_records": len(dataset)}, indent=2, default=str) + "\n")
    log = (out / "train_log.jsonl").open("w")
    print(f"training {n_trainable:,} parameters for {total_steps} steps on {len(dataset)} records "
          f"({args.loss} loss, eos id {eos})", flush=True)
    step, micro, t0 = 0, 0, time.time()
    acc_loss, acc_ce = 0.0, 0.0
    while step < total_steps:
        for batch in loader:
            inputs, labels = split_labels(to_model(batch, base, device))
            logits = base(**inputs).logits
            loss = loss_fn(logits, labels)
            (loss / args.grad_accum).backward()
            with torch.no_grad():
                acc_ce += float(standard_lm_loss(logits.detach(), labels)) / args.grad_accum
            acc_loss += float(loss.detach()) / args.grad_accum
            micro += 1
            if micro % args.grad_accum:
                continue
            if args.max_grad_norm and args.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], args.max_grad_norm)
            lr_used = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            row = {"step": step, "loss": acc_loss, "standard_ce": acc_ce, "lr": lr_used,
                   "elapsed_s": round(time.time() - t0, 2)}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if step % args.log_every == 0 or step == total_steps:
                print(json.dumps(row), flush=True)
            acc_loss, acc_ce = 0.0, 0.0
            if step >= total_steps:
                break
    log.close()
    model.save_pretrained(str(out))
    print(f"saved adapter to {out} (use model.adapter={out})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
