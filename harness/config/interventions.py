"""Schemas of the intervention configs (`configs/intervention/<name>.yaml`), one dataclass per intervention.

Values and their documentation live in the YAML files; the meaning of each option is in the intervention's
module docstring (`interventions/<name>.py`). `SCHEMAS` maps an intervention name to its schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from harness.config.schema import rule


@dataclass
class InterventionConfig:
    """What every intervention config has: its registered name."""

    name: str = MISSING


@dataclass
class NoneConfig(InterventionConfig):
    """No intervention: the baseline."""


@dataclass
class ComposeConfig(InterventionConfig):
    """Several interventions at once; each member is a config of its own intervention."""

    members: List[Any] = MISSING


@dataclass
class HeadGuideConfig(InterventionConfig):
    """Heads-guided attention (interventions/head_guide.py)."""

    layers: Optional[List[int]] = MISSING
    layers_inclusive: bool = MISSING
    alpha: float = rule(ge=0, finite=True)
    aggregation: str = rule(choices=("mean", "topk"))
    top_k: Optional[int] = rule(ge=1)
    reference_prefill_mask: bool = MISSING


@dataclass
class DamroConfig(InterventionConfig):
    """DAMRO contrastive decoding (interventions/damro.py)."""

    alpha: Optional[float] = rule(ge=0, finite=True)
    beta: float = rule(ge=0, le=1, finite=True)
    topk: Optional[int] = rule(ge=1)
    reference_sampling: bool = MISSING
    reference_cls_offset: bool = MISSING


@dataclass
class VcdConfig(InterventionConfig):
    """Visual contrastive decoding (interventions/vcd.py)."""

    alpha: float = rule(ge=0, finite=True)
    beta: float = rule(ge=0, le=1, finite=True)
    noise_step: int = rule(ge=0, le=999)
    noise_seed: int = MISSING
    reference_sampling: bool = MISSING


@dataclass
class PaiConfig(InterventionConfig):
    """PAI image-attention amplification + no-image guidance (interventions/pai.py)."""

    alpha: float = rule(ge=0, finite=True)
    gamma: float = rule(ge=0, finite=True)
    beta: float = rule(ge=0, le=1, finite=True)
    start_layer: int = rule(ge=0)
    end_layer: Optional[int] = rule(ge=1)
    reference_cfg_prefill: bool = MISSING


@dataclass
class IcdConfig(InterventionConfig):
    """Instruction contrastive decoding (interventions/icd.py)."""

    alpha: float = rule(ge=0, finite=True)
    beta: float = rule(ge=0, le=1, finite=True)
    prompts: List[str] = MISSING
    prompt_index: int = rule(ge=0)
    placement: Optional[str] = rule(choices=("system", "question", "qformer"))
    qformer_with_question: bool = MISSING
    qformer_text: str = rule(choices=("blip_caption", "raw"))
    reference_sampling: bool = MISSING


@dataclass
class M3idConfig(InterventionConfig):
    """M3ID mutual-information decoding against the no-image prompt (interventions/m3id.py)."""

    lam: float = rule(ge=0, finite=True)
    t_start: int = rule(ge=0)
    beta: Optional[float] = rule(gt=0, le=1, finite=True)
    confidence_gate: Optional[float] = rule(gt=0, le=1, finite=True)


@dataclass
class DolaConfig(InterventionConfig):
    """DoLa layer-contrast decoding (interventions/dola.py)."""

    layers: Optional[Any] = MISSING
    relative_top: float = rule(gt=0, le=1, finite=True)
    repetition_penalty: Optional[float] = rule(gt=0, finite=True)
    final_norm: bool = MISSING
    reference_batch_mean: bool = MISSING


@dataclass
class SteerConfig(InterventionConfig):
    """Latent steering with VTI / VaLSe directions (interventions/steer.py)."""

    vectors: Optional[str] = MISSING
    lam: float = rule(finite=True)
    lam_text: Optional[float] = rule(finite=True)
    lam_vision: Optional[float] = rule(finite=True)
    layers: Optional[List[int]] = MISSING
    vision_layers: Optional[List[int]] = MISSING
    positions: str = rule(choices=("all", "last"))
    site: str = rule(choices=("block", "mlp"))
    mode: str = rule(choices=("add", "renorm"))


@dataclass
class WarnConfig(InterventionConfig):
    """VAR hallucination warnings (interventions/warn.py)."""

    detector: Optional[str] = MISSING
    threshold: float = rule(ge=0, le=1)


@dataclass
class FirstTokenProbeConfig(InterventionConfig):
    """LVLM-LP first-token probe (interventions/first_token_probe.py)."""

    probe: Optional[str] = MISSING
    threshold: float = rule(ge=0, le=1)
    rows: str = rule(choices=("auto", "all"))


@dataclass
class YesBiasConfig(InterventionConfig):
    """Mirage control: a constant yes/no log-odds shift (interventions/mirage.py)."""

    strength: float = rule(finite=True)
    steps: str = rule(choices=("first", "all"))


@dataclass
class PlausibilityCutConfig(InterventionConfig):
    """Mirage control: the adaptive plausibility cut alone (interventions/mirage.py)."""

    beta: float = rule(ge=0, le=1, finite=True)


@dataclass
class OperaConfig(InterventionConfig):
    """OPERA beam search with over-trust penalty and retrospection (interventions/opera.py)."""

    scale_factor: float = rule(gt=0, finite=True)
    threshold: int = rule(ge=0)
    num_attn_candidates: int = rule(ge=1)
    penalty_weights: float = rule(ge=0, finite=True)
    window_size: int = rule(ge=1)
    rollback: bool = MISSING
    rollback_min_location: int = rule(ge=0)
    rollback_max_per_position: Optional[int] = rule(ge=1)
    image_penalty_steps: int = rule(ge=0)
    reference_candidate_softmax: bool = MISSING
    reference_float16_scores: bool = MISSING
    reference_length_normalization: bool = MISSING


SCHEMAS: dict[str, type] = {
    "none": NoneConfig,
    "compose": ComposeConfig,
    "head_guide": HeadGuideConfig,
    "damro": DamroConfig,
    "vcd": VcdConfig,
    "pai": PaiConfig,
    "icd": IcdConfig,
    "m3id": M3idConfig,
    "dola": DolaConfig,
    "steer": SteerConfig,
    "warn": WarnConfig,
    "first_token_probe": FirstTokenProbeConfig,
    "yes_bias": YesBiasConfig,
    "plausibility_cut": PlausibilityCutConfig,
    "opera": OperaConfig,
}
