"""`icd`: Instruction Contrastive Decoding (Wang et al., Findings of ACL 2024, arXiv:2403.18715).

The contrastive view is the same image with an instruction disturbance (a role prefix such as "You are a
confused objects detector ...") added to the instruction; decoding contrasts the two views with the VCD
formula of `interventions.contrastive`:

    s = (1 + alpha) * logits - alpha * logits_disturbed,   -inf where logits < log(beta) + max logits

Reference behaviour (github.com/p1k0pan/ICD):
- `icd_utils/icd_sample.py` / `icd_sample_llava.py` (patched `GenerationMixin.sample`): the disturbed view has
  its own cache; `cutoff = log(cd_beta) + max(logits)`, `diffs = (1+cd_alpha)*logits - cd_alpha*logits_cd`,
  masked below the cutoff, on raw logits, then `logits_processor` and `logits_warper`: the engine's default
  order (`reference_sampling: false`). Scripts: `cd_alpha` 1, `cd_beta` 0.1 (argparse defaults of every
  `experiments/gen_scripts/icd_*.py`), nucleus sampling with top_p 1, temperature 1.
- The disturbances: the five `preprompt` strings of the gen scripts (`configs/intervention/icd.yaml`
  `prompts`, in the scripts' order); the scripts run each of them in turn; `prompt_index` picks one.
- Where the disturbance goes (`placement`):
  - `system` (LLaVA, `icd_llava_pope.py`): the conversation `llava_custom` whose system message IS the
    disturbance: "<disturbance> USER: <image>\\n<question> ASSISTANT:". Here: chat-template families render
    the prompt with the disturbance as the system message (replacing any configured system prompt); a string
    template is cut before its first "USER:" and prefixed with the disturbance and a space (a template
    without "USER:" raises, naming the family).
  - `qformer` (InstructBLIP, `icd_ib_*.py` + `lavis/.../blip2_vicuna_instruct.py`): the language-model prompt
    is unchanged; only the Q-Former's instruction text becomes the disturbance (`normal.json`), or the
    disturbance immediately followed by the question (`question.json`, concatenated without a space:
    `qformer_with_question: true`). Only for families whose image encoder reads an instruction (Q-Former
    text); others raise naming the family. The scripts pass that text through LAVIS's eval text processor
    (`blip_caption`, `lavis/processors/blip_processors.py`: lower-case, each of `.!"()*#:;~` -> a space,
    runs of whitespace -> one space, stripped, at most 50 words): `qformer_text: blip_caption` (default) does
    the same (`blip_caption_text`); `qformer_text: raw` gives the Q-Former tokenizer the text as written.
  - `question`: the disturbance and a space before the question, inside the family's own prompt (any
    family; not in the reference, for templates without a system turn such as BLIP-2's).
  `placement: null` picks `qformer` where the image encoder reads the instruction, else `system` where the
  prompt has a system turn, else `question`.
- Quirk not reproduced: `icd_llava_pope.py` imports `evolve_icd_sampling` from `icd_sample_llava.py`, which
  only defines `evolve_iccd_sampling`.

`alpha: 0` reproduces the baseline exactly. Greedy and sampling only (the engine has no beam search).
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Any, Iterator

from harness.registry import INTERVENTIONS
from interventions.base import GenerationPlan, Intervention
from interventions.contrastive import ContrastiveIntervention, View, batch_view

PLACEMENTS = ("system", "question", "qformer")
_BLIP_PUNCT = re.compile(r"([.!\"()*#:;~])")
_BLIP_SPACES = re.compile(r"\s{2,}")


def blip_caption_text(text: str, max_words: int = 50) -> str:
    """LAVIS's `BlipCaptionProcessor.pre_caption` (the eval text processor of InstructBLIP's scripts):
    lower-cased, `.!"()*#:;~` replaced by spaces, whitespace runs collapsed, stripped, cut to `max_words`."""
    text = _BLIP_SPACES.sub(" ", _BLIP_PUNCT.sub(" ", text.lower())).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def reads_instruction(model: Any) -> bool:
    """Whether the family's image encoder takes the instruction text (InstructBLIP's Q-Former); `model` is an
    adapter or a ModelInfo."""
    return "qformer_input_ids" in model.spec.vision_keys


def default_placement(model: Any) -> str:
    """qformer where the image encoder reads the instruction, system where the prompt has a system turn (a chat
    template, or a string template with a "USER:" turn), else question; `model` is an adapter or a ModelInfo."""
    if reads_instruction(model):
        return "qformer"
    if model.prompt_template is None or "USER:" in model.prompt_template:
        return "system"
    return "question"


def disturbed_prompts(adapter: Any, questions: list[str], text: str, placement: str) -> list[str]:
    """The rows' full prompts with the disturbance `text` as system message or before the question."""
    if placement == "question":
        return [adapter.format_prompt(f"{text} {q}") for q in questions]
    template = adapter.prompt_template
    if template is None:  # the checkpoint's chat template: the disturbance is the system message
        saved = adapter.system_prompt
        adapter.system_prompt = text
        try:
            return [adapter.format_prompt(q) for q in questions]
        finally:
            adapter.system_prompt = saved
    cut = template.find("USER:")
    if cut < 0:
        raise ValueError(f"icd placement=system: model family {adapter.family!r} uses the prompt template "
                         f"{template!r}, which has no 'USER:' turn to put a system message before; "
                         f"use intervention.placement=question")
    return [f"{text} " + template[cut:].format(question=q) for q in questions]


@INTERVENTIONS.register("icd")
class Icd(ContrastiveIntervention, Intervention):
    """Contrastive decoding against an instruction-disturbed prompt (see the module docstring)."""

    name = "icd"
    strength_key = "alpha"

    def params(self) -> dict:
        """The parameters, with the chosen disturbance text in place of the prompt list and index."""
        p = super().params()
        p.pop("prompts", None)
        p.pop("prompt_index", None)
        p["prompt"] = self.disturbance()
        return dict(sorted(p.items()))

    def disturbance(self) -> str:
        """The chosen disturbance prompt."""
        prompts, i = list(self.cfg["prompts"]), int(self.cfg["prompt_index"])
        if not 0 <= i < len(prompts):
            raise ValueError(f"icd.prompt_index={i}: there are {len(prompts)} prompts (valid 0..{len(prompts) - 1})")
        return str(prompts[i])

    def model_defaults(self, model: Any) -> dict:
        """`placement: null` -> this model's placement (`default_placement`), before any weights load."""
        return {"placement": default_placement(model)}

    def setup(self, adapter: Any) -> None:
        """Resolve `placement` for this model and check that it applies."""
        self.resolve(adapter.info)
        if self.cfg["placement"] == "qformer" and not reads_instruction(adapter):
            raise ValueError(f"icd placement=qformer cannot run on model family {adapter.family!r}: its image "
                             f"encoder takes no instruction text (only InstructBLIP-style Q-Formers do)")
        self.disturbance()

    def views(self, adapter: Any, batch: Any) -> list[View]:
        """(original, disturbed) views of the batch; the image is encoded again only when the encoder reads
        the instruction."""
        self.setup(adapter)
        text, placement = self.disturbance(), self.cfg["placement"]
        if not batch.questions:
            raise ValueError("icd needs the batch's questions (build the batch with adapter.prepare)")
        original = batch_view(adapter, batch.inputs)
        if placement == "qformer":
            qtok = adapter.processor.qformer_tokenizer
            texts = [text + q if self.cfg["qformer_with_question"] else text for q in batch.questions]
            if self.cfg["qformer_text"] == "blip_caption":
                texts = [blip_caption_text(t) for t in texts]
            enc = qtok(texts, padding=True, return_tensors="pt")
            dev = batch.inputs["qformer_input_ids"].device
            inputs = {**batch.inputs, "qformer_input_ids": enc["input_ids"].to(dev),
                      "qformer_attention_mask": enc["attention_mask"].to(dev)}
            return [original, batch_view(adapter, inputs)]
        prompts = disturbed_prompts(adapter, list(batch.questions), text, placement)
        inputs = adapter.to_model(adapter.spec.process(adapter.processor, batch.images, prompts))
        if reads_instruction(adapter):
            return [original, batch_view(adapter, inputs)]
        return [original, View(inputs["input_ids"], inputs["attention_mask"], original.encoding,
                               adapter.spec.image_kwargs(inputs))]

    @contextmanager
    def session(self, adapter: Any, batch: Any) -> Iterator[GenerationPlan]:
        """A plan whose generate_fn is the contrastive engine with the disturbed view."""
        self.setup(adapter)
        yield GenerationPlan(generate_fn=self.generate_fn(adapter))
