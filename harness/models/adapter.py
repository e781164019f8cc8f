"""A uniform view of one vision-language model: prompts, batched inputs, image-token spans, sites, generation.

Everything architecture-specific comes from the model's family object (`adapter.spec`, see
`harness.models.families`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

from harness.errors import ConfigValueError

def resolve_module(root: torch.nn.Module, path: str) -> torch.nn.Module:
    """The submodule at dotted `path`; a KeyError names the path when it does not resolve."""
    try:
        return root.get_submodule(path)
    except AttributeError as e:
        raise KeyError(f"module path {path!r} does not resolve on {type(root).__name__}: {e}") from None


@dataclass
class Batch:
    """Processed model inputs for a batch of (image, question) pairs, plus what produced them."""

    inputs: dict  # tensors for model.forward / generate
    prompts: list[str]  # the full templated prompts
    images: list[Any] = field(default_factory=list)  # PIL images, in row order
    items: list[Any] = field(default_factory=list)  # the benchmark Items of the rows, when the runner made it
    questions: list[str] = field(default_factory=list)  # the questions before the template (`prepare`)


class VLMAdapter:
    """Wraps a Hugging Face VLM and its processor with the knowledge of its model family (`spec`)."""

    def __init__(self, model: torch.nn.Module, processor: Any, spec: Any, name: str = "",
                 prompt_template: str | None = None, system_prompt: str | None = None):
        self.model = model
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.spec = spec  # the ModelFamily object
        self.family = spec.name
        self.name = name or spec.name
        self.sites = spec.sites
        self.prompt_template = prompt_template or spec.prompt_template
        self.system_prompt = system_prompt
        self.image_token_id = spec.image_token_id(model)
        self.tokenizer.padding_side = "left"  # batched generation needs left padding
        qtok = getattr(processor, "qformer_tokenizer", None)
        if qtok is not None:
            qtok.padding_side = "right"  # BERT-style Q-Former input: right padding like a single row

    @property
    def info(self) -> Any:
        """The model's ModelInfo (family object and HF config), what interventions resolve defaults against."""
        from harness.models.loader import ModelInfo

        return ModelInfo(self.spec, self.model.config, self.name, self.prompt_template)

    # ---- sites -------------------------------------------------------------------------------
    def site(self, name: str) -> torch.nn.Module:
        """The module for abstract site `name` (e.g. 'decoder_layers', 'lm_head', 'vision_layers')."""
        path = self.sites.get(name)
        if not path:
            raise KeyError(f"site {name!r} is not defined for model family {self.family!r}")
        return resolve_module(self.model, path)

    def site_path(self, name: str) -> str:
        """The dotted module path of abstract site `name`."""
        path = self.sites.get(name)
        if not path:
            raise KeyError(f"site {name!r} is not defined for model family {self.family!r}")
        return path

    def decoder_layers(self) -> torch.nn.ModuleList:
        """The decoder blocks of the language model."""
        return self.site("decoder_layers")

    @property
    def num_layers(self) -> int:
        """Number of decoder blocks."""
        return len(self.decoder_layers())

    @property
    def device(self) -> torch.device:
        """The device of the input embeddings (where inputs go)."""
        return self.site("embed_tokens").weight.device

    # ---- prompts and inputs ------------------------------------------------------------------
    def format_prompt(self, question: str, with_image: bool = True) -> str:
        """The full model prompt for a question: the family's template, else the checkpoint's chat template."""
        if self.prompt_template:
            return self.prompt_template.format(question=question)
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def prepare(self, images: Sequence[Any], questions: Sequence[str]) -> Batch:
        """Tokenised, left-padded inputs for a batch of images and questions, on the model's device."""
        prompts = [self.format_prompt(q) for q in questions]
        enc = self.spec.process(self.processor, images, prompts)
        return Batch(inputs=self.to_model(enc), prompts=prompts, images=list(images), questions=list(questions))

    def to_model(self, enc: Any) -> dict:
        """Processor output as a dict of tensors on the model's device, floats in the model's dtype."""
        dtype = next(self.model.parameters()).dtype
        inputs = {}
        for k, v in enc.items():
            if torch.is_tensor(v):
                v = v.to(self.device)
                if v.is_floating_point():
                    v = v.to(dtype)
            inputs[k] = v
        return inputs

    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Boolean [batch, seq] mask of the positions that hold image features (the family decides which)."""
        return self.spec.image_token_mask(self, input_ids)

    def image_positions(self, input_ids: torch.Tensor) -> list[torch.Tensor]:
        """Per row, the positions that hold image features, in order (contiguous or not: Idefics3's tiles are
        separated by text tokens)."""
        return [row.nonzero().flatten() for row in self.image_token_mask(input_ids)]

    def image_spans(self, input_ids: torch.Tensor) -> list[tuple[int, int]]:
        """Per row, the [start, end) span of image-token positions; a ValueError where they are not contiguous
        (use `image_positions` there)."""
        spans = []
        for row in self.image_token_mask(input_ids):
            idx = row.nonzero().flatten()
            if idx.numel() == 0:
                spans.append((0, 0))
                continue
            start, end = int(idx[0]), int(idx[-1]) + 1
            if end - start != idx.numel():
                raise ValueError("image tokens are not contiguous in this row; spans are undefined")
            spans.append((start, end))
        return spans

    # ---- generation --------------------------------------------------------------------------
    def generate(self, batch: Batch, decoding: dict, logits_processor: list | None = None,
                 **extra: Any) -> list[str]:
        """Generated answers (decoded, stripped) for a prepared batch under a decoding config."""
        ids = self.generate_ids(batch, decoding, logits_processor, **extra)
        return self.decode(ids)

    def generate_ids(self, batch: Batch, decoding: dict, logits_processor: list | None = None,
                     **extra: Any) -> torch.Tensor:
        """New token ids [batch, new] for a prepared batch (prompt tokens removed)."""
        from transformers import LogitsProcessorList

        kwargs = generation_kwargs(decoding, self.tokenizer)
        kwargs.update(extra)
        if logits_processor:
            kwargs["logits_processor"] = LogitsProcessorList(logits_processor)
        with torch.inference_mode():
            out = self.model.generate(**batch.inputs, **kwargs)
        return out[:, batch.inputs["input_ids"].shape[1]:]

    def decode(self, ids: torch.Tensor) -> list[str]:
        """Texts for token id rows, special tokens and padding dropped."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def generation_kwargs(decoding: dict, tokenizer: Any) -> dict:
    """`generate` keyword arguments for a decoding config (greedy, beam or sampling); a partial dict given in
    code starts from the YAML of its strategy (configs/decoding/<strategy>.yaml)."""
    from harness.config import decoding_node

    d = decoding_node(decoding)
    if d["max_new_tokens"] is None:  # the pipeline fills it from benchmark.max_new_tokens
        raise ConfigValueError("decoding.max_new_tokens is not set (null means: the benchmark's max_new_tokens)")
    kw: dict = {"max_new_tokens": int(d["max_new_tokens"]), "pad_token_id": tokenizer.pad_token_id}
    if d["strategy"] == "greedy":
        kw.update(do_sample=False, num_beams=1)
    elif d["strategy"] == "beam":
        kw.update(do_sample=False, num_beams=int(d["num_beams"]))
    else:
        kw.update(do_sample=True, temperature=float(d["temperature"]), top_p=float(d["top_p"]),
                  top_k=int(d["top_k"] or 0))
    for key in ("repetition_penalty", "length_penalty", "min_new_tokens"):
        if d[key] is not None:
            kw[key] = d[key]
    return kw
