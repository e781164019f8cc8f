"""LLaVA-style conversation data -> model inputs and labels, for any adapter family.

A record is what LLaVA's instruction data holds (`LLaVA-Instruct-150K`, `detail_23k.json`)::

    {"id": "...", "image": "COCO_...jpg",
     "conversations": [{"from": "human", "value": "<image>\\nDescribe the image."},
                       {"from": "gpt", "value": "The image shows ..."}, ...]}

How a record is encoded (the supervision layout of LLaVA's `preprocess_v1` in `llava/train/train.py`):

* the first human turn is formatted by the adapter's own prompt (`adapter.format_prompt`: the
  family's chat template or prompt template, the same prompt the benchmarks use) and run through the
  processor together with the image, so image placeholders are expanded exactly as at inference;
* each assistant answer is tokenized without special tokens and followed by the EOS token;
  answer tokens and that EOS are the only supervised labels (everything else is -100: prompt, image
  and padding positions), so every assistant turn ends with one supervised EOS, as in LLaVA;
* a later human turn is the text the chat template adds for it (rendered conversation with the turn
  minus the rendered conversation before it; families with a plain prompt template use the template).

Labels are aligned with `input_ids` (the loss shifts them). Rows are right-padded, so a padded row gives
the same logits as the row alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from harness.eos.selective_loss import IGNORE_INDEX

IMAGE_PLACEHOLDER = "<image>"
HUMAN_ROLES = ("human", "user")
ASSISTANT_ROLES = ("gpt", "assistant")


def load_records(path: str | Path) -> list[dict]:
    """Conversation records from a LLaVA JSON list (or JSONL, one record a line)."""
    text = Path(path).read_text()
    if text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def conversation_turns(record: dict) -> list[tuple[str, str]]:
    """(question, answer) pairs of a record, image placeholder removed; a leading assistant turn is
    skipped (as LLaVA's preprocessing does); roles must alternate human, assistant."""
    conv = list(record.get("conversations") or [])
    if conv and conv[0].get("from", "").lower() in ASSISTANT_ROLES:
        conv = conv[1:]
    if not conv or len(conv) % 2:
        raise ValueError(f"record {record.get('id')!r}: needs human/assistant pairs, got {len(conv)} turns")
    turns = []
    for k in range(0, len(conv), 2):
        q, a = conv[k], conv[k + 1]
        if q.get("from", "").lower() not in HUMAN_ROLES or a.get("from", "").lower() not in ASSISTANT_ROLES:
            raise ValueError(f"record {record.get('id')!r}: turn {k // 2} is not a human/assistant pair")
        question = q["value"].replace(IMAGE_PLACEHOLDER, "").strip()
        turns.append((question, a["value"].strip()))
    return turns


def _messages(adapter, turns: Sequence[tuple[str, str]], upto: int, with_image: bool,
              with_question: bool) -> list[dict]:
    """Chat messages for turns[:upto] (and the question of turn `upto` when with_question)."""
    msgs: list[dict] = []
    if adapter.system_prompt:
        msgs.append({"role": "system", "content": [{"type": "text", "text": adapter.system_prompt}]})
    for k in range(upto + (1 if with_question else 0)):
        q, a = turns[k]
        content = ([{"type": "image"}] if (k == 0 and with_image) else []) + [{"type": "text", "text": q}]
        msgs.append({"role": "user", "content": content})
        if k < upto:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": a}]})
    return msgs


def later_turn_text(adapter, turns: Sequence[tuple[str, str]], k: int, with_image: bool) -> str:
    """The prompt text of human turn k >= 1, following the conversation's earlier turns."""
    if adapter.prompt_template:
        return adapter.prompt_template.format(question=turns[k][0])
    render = adapter.processor.apply_chat_template
    before = render(_messages(adapter, turns, k, with_image, with_question=False), add_generation_prompt=False)
    full = render(_messages(adapter, turns, k, with_image, with_question=True), add_generation_prompt=True)
    if not full.startswith(before):
        raise ValueError("the chat template does not render a conversation as a prefix of its continuation; "
                         "multi-turn records are unsupported for this model")
    return full[len(before):]


def encode_record(adapter, record: dict, image: Any | None, max_length: int | None = None) -> dict:
    """One record as 1-D `input_ids`, `attention_mask`, `labels` plus the processor's image tensors
    (with their batch dimension of 1). `image`: a PIL image, or None for a text-only record."""
    turns = conversation_turns(record)
    tok = adapter.tokenizer
    eos = tok.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no eos_token_id")
    with_image = image is not None
    first = adapter.format_prompt(turns[0][0], with_image=with_image)
    extra = adapter.spec.text_kwargs
    enc = (adapter.processor(images=[image], text=[first], return_tensors="pt", **extra) if with_image
           else adapter.processor(text=[first], return_tensors="pt", **extra))
    ids = enc["input_ids"][0].tolist()
    labels = [IGNORE_INDEX] * len(ids)
    for k, (_, answer) in enumerate(turns):
        if k > 0:
            prompt_ids = tok(later_turn_text(adapter, turns, k, with_image), add_special_tokens=False).input_ids
            ids += prompt_ids
            labels += [IGNORE_INDEX] * len(prompt_ids)
        answer_ids = tok(answer, add_special_tokens=False).input_ids + [eos]
        ids += answer_ids
        labels += answer_ids
    if max_length is not None and len(ids) > max_length:
        n_image = sum(1 for t in ids[:max_length] if t == adapter.image_token_id)
        if with_image and n_image != sum(1 for t in ids if t == adapter.image_token_id):
            raise ValueError(f"record {record.get('id')!r}: max_length={max_length} cuts the image tokens")
        ids, labels = ids[:max_length], labels[:max_length]
    out = {"input_ids": torch.tensor(ids, dtype=torch.long),
           "attention_mask": torch.ones(len(ids), dtype=torch.long),
           "labels": torch.tensor(labels, dtype=torch.long)}
    for key, val in enc.items():
        if key not in ("input_ids", "attention_mask") and torch.is_tensor(val):
            out[key] = val
    return out


def _pad_right(rows: list[torch.Tensor], fill: int) -> torch.Tensor:
    width = max(r.shape[-1] for r in rows)
    return torch.stack([torch.cat([r, r.new_full((width - r.shape[-1],), fill)]) for r in rows])


def collate(features: list[dict], pad_token_id: int, qformer_pad_id: int = 0) -> dict:
    """A right-padded batch: labels padded with -100, attention masks with 0; image tensors concatenated
    (LLaVA-NeXT patch stacks are zero-padded to the longest; the model drops the padding patches)."""
    out: dict = {}
    for key in features[0]:
        vals = [f[key] for f in features]
        if key in ("input_ids", "attention_mask", "labels"):
            fill = IGNORE_INDEX if key == "labels" else (0 if key == "attention_mask" else pad_token_id)
            out[key] = _pad_right(vals, fill)
        elif key.startswith("qformer_"):
            fill = 0 if key.endswith("attention_mask") else qformer_pad_id
            out[key] = _pad_right([v[0] for v in vals], fill)
        else:
            if any(v.shape[1:] != vals[0].shape[1:] for v in vals):
                if vals[0].dim() != 5:
                    raise ValueError(f"cannot batch {key!r} of shapes {[tuple(v.shape) for v in vals]}")
                n = max(v.shape[1] for v in vals)
                vals = [torch.cat([v, v.new_zeros((v.shape[0], n - v.shape[1], *v.shape[2:]))], dim=1)
                        for v in vals]
            out[key] = torch.cat(vals)
    return out


def to_model(batch: dict, model: torch.nn.Module, device: torch.device | str) -> dict:
    """The batch on the model's device, floating tensors in the model's dtype."""
    dtype = next(model.parameters()).dtype
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device)
            if v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    return out


def split_labels(batch: dict) -> tuple[dict, torch.Tensor]:
    """(model inputs without labels, labels)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return inputs, batch["labels"]


def load_image(record: dict, image_folder: str | Path | None):
    """The record's image (RGB PIL) from `image_folder`, or None when the record has no image."""
    if not record.get("image"):
        return None
    from PIL import Image

    path = Path(record["image"])
    if not path.is_absolute() and image_folder is not None:
        path = Path(image_folder) / path
    return Image.open(path).convert("RGB")


class ConversationDataset(torch.utils.data.Dataset):
    """Encodes records lazily with an adapter (processor + tokenizer + prompt format)."""

    def __init__(self, adapter, records: Sequence[dict], image_folder: str | Path | None,
                 max_length: int | None = None):
        self.adapter = adapter
        self.records = list(records)
        self.image_folder = image_folder
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        rec = self.records[i]
        return encode_record(self.adapter, rec, load_image(rec, self.image_folder), self.max_length)

    def collate(self, features: list[dict]) -> dict:
        """`collate` with this adapter's pad ids."""
        qtok = getattr(self.adapter.processor, "qformer_tokenizer", None)
        return collate(features, self.adapter.tokenizer.pad_token_id,
                       getattr(qtok, "pad_token_id", 0) or 0)


def iter_batches(dataset: ConversationDataset, batch_size: int) -> Iterator[tuple[list[dict], dict]]:
    """(records, collated batch) in dataset order."""
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        yield [dataset.records[i] for i in idx], dataset.collate([dataset[i] for i in idx])


# ---- the bundled demo data ---------------------------------------------------------------------
def _with_article(obj: str) -> str:
    return ("an " if obj[0] in "aeiou" else "a ") + obj


def _listing(objs: Sequence[str]) -> str:
    items = [_with_article(o) for o in objs]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def build_coco_demo_records(images_dir: str | Path, objects_json: str | Path) -> list[dict]:
    """The records of `benchmarks/data/eos/coco6_conversations.json`: per shipped COCO image, a
    description templated from its CHAIR ground-truth objects; the first two images get a second turn
    asking about their first object (multi-turn coverage)."""
    objects = json.loads(Path(objects_json).read_text())
    records = []
    for i, path in enumerate(sorted(Path(images_dir).glob("COCO_val2014_*.jpg"))):
        image_id = int(path.stem.rsplit("_", 1)[-1])
        objs = sorted(objects[str(image_id)])
        conv = [{"from": "human", "value": "<image>\nDescribe this image in detail."},
                {"from": "gpt", "value": f"In the image there is {_listing(objs)}."}]
        if i < 2:
            conv += [{"from": "human", "value": f"Is there {_with_article(objs[0])} in the image?"},
                     {"from": "gpt", "value": f"Yes, there is {_with_article(objs[0])} in the image."}]
        records.append({"id": f"coco6_{image_id}", "image": path.name, "image_id": image_id,
                        "conversations": conv})
    return records


# ---- model configs for the command-line tools ---------------------------------------------------
MODEL_CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "model"


def load_model_config(name_or_path: str, overrides: Sequence[str] = ()) -> dict:
    """A model config node: `configs/model/<name>.yaml` or a YAML file path, with `key=value`
    overrides (values parsed as YAML, e.g. `dtype=bfloat16`, `adapter=/path`, `device=cpu`)."""
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = MODEL_CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        valid = sorted(p.stem for p in MODEL_CONFIG_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"model config {name_or_path!r} not found; valid names: {', '.join(valid)}")
    cfg = yaml.safe_load(path.read_text()) or {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        cfg[key.strip()] = yaml.safe_load(value)
    return cfg


def add_data_arguments(ap) -> None:
    """The model and data options shared by the EOS scripts (--model, --set, --data, --image-folder)."""
    from benchmarks.base import DATA_DIR

    ap.add_argument("--model", default="tiny_llava", help="configs/model/<name>.yaml or a YAML path")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="model config overrides")
    ap.add_argument("--data", default=str(DATA_DIR / "eos" / "coco6_conversations.json"),
                    help="LLaVA conversation JSON / JSONL")
    ap.add_argument("--image-folder", default=str(DATA_DIR / "images"))
