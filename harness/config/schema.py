"""The schema of every config group: Hydra structured configs (dataclasses in the ConfigStore).

The YAML files in `configs/` hold the values (and their documentation); these dataclasses hold the types
and the allowed ranges. Every YAML of a group names its schema in its `defaults:` list (`- /schema/...`),
so a wrong type is caught while Hydra composes, and `harness.config.validate` checks the ranges before
anything loads. A field is MISSING unless "not set" is a meaningful value for every choice of the group
(then its default is None), so each value has one home: its YAML file.

Range rules live in field metadata: `ge`, `gt`, `le`, `lt` (numbers, None allowed when Optional),
`choices` (a tuple of allowed values), `finite` (no NaN or infinity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING


def rule(default: Any = MISSING, **rules: Any) -> Any:
    """A dataclass field with range rules in its metadata (see the module docstring)."""
    return field(default=default, metadata=rules)


# ---- model, decoding, run -----------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    """One checkpoint (`configs/model/<name>.yaml`): a hub id or local folder, or an offline tiny model."""

    name: str = MISSING
    family: Optional[str] = MISSING  # null: inferred from the checkpoint's config.model_type
    path: Optional[str] = MISSING  # hub id or local folder
    tiny: Optional[str] = MISSING  # an offline tiny model (tiny_<family>) instead of a checkpoint
    tiny_seed: Optional[int] = None  # seed of the tiny model's random weights (tiny models only)
    dtype: str = rule(choices=("float32", "float16", "bfloat16", "auto"))
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    device_map: Optional[Any] = MISSING  # "auto" or a dict: spread the model over devices
    attn_implementation: str = rule(choices=("sdpa", "eager", "flash_attention_2", "flash_attention_3",
                                             "flex_attention"))
    trust_remote_code: bool = MISSING
    adapter: Optional[str] = MISSING  # a LoRA adapter folder (peft)
    prompt_template: Optional[str] = MISSING  # overrides the family's prompt, e.g. "{question}"
    system_prompt: Optional[str] = MISSING


@dataclass
class DecodingConfig:
    """How tokens are chosen (`configs/decoding/<strategy>.yaml`); unset keys are not passed to generate."""

    strategy: str = rule(choices=("greedy", "beam", "sample"))
    max_new_tokens: Optional[int] = rule(None, ge=1)  # null: the benchmark's max_new_tokens
    num_beams: Optional[int] = rule(None, ge=1)
    temperature: Optional[float] = rule(None, gt=0, finite=True)
    top_p: Optional[float] = rule(None, gt=0, le=1)
    top_k: Optional[int] = rule(None, ge=0)
    repetition_penalty: Optional[float] = rule(None, gt=0, finite=True)
    length_penalty: Optional[float] = rule(None, finite=True)
    min_new_tokens: Optional[int] = rule(None, ge=0)


@dataclass
class RunConfig:
    """How a job runs (the `run:` block of configs/config.yaml)."""

    batch_size: int = rule(ge=1)
    limit: Optional[int] = rule(ge=1)
    num_shards: Optional[int] = rule(ge=1)
    shard_id: Optional[int] = rule(ge=0)
    skip_missing: bool = MISSING
    num_threads: Optional[int] = rule(ge=1)


@dataclass
class JudgeConfig:
    """The LLM judge (`configs/judge/default.yaml`; meaning of each key: harness.judge.settings)."""

    model: Optional[str] = MISSING
    base_url: str = MISSING
    api_key_env: Optional[str] = MISSING
    prompt: Optional[str] = MISSING
    max_tokens: Optional[int] = rule(ge=1)
    temperature: Optional[float] = rule(ge=0, finite=True)
    top_p: Optional[float] = rule(gt=0, le=1)
    timeout_s: float = rule(gt=0, finite=True)
    max_retries: int = rule(ge=0)
    backoff_base_s: float = rule(ge=0, finite=True)
    backoff_max_s: float = rule(ge=0, finite=True)
    concurrency: int = rule(ge=1)
    max_failures_in_a_row: int = rule(ge=0)
    parse_retries: int = rule(ge=0)
    cache_dir: Optional[str] = MISSING
    progress: bool = MISSING
    strict: bool = MISSING
    extra: Dict[str, Any] = MISSING


@dataclass
class PairwiseJudgeConfig(JudgeConfig):
    """`halluc-bench-judge`: the judge plus the two answer sets it compares (configs/judge.yaml)."""

    answers_a: str = MISSING
    answers_b: str = MISSING
    names: List[str] = MISSING
    image_root: Optional[str] = MISSING
    question_file: str = MISSING
    prompt_file: str = MISSING
    both_orders: bool = MISSING
    out_dir: str = MISSING


@dataclass
class Config:
    """The top config (configs/config.yaml): one job = model x intervention x benchmark (x decoding)."""

    model: ModelConfig = MISSING
    intervention: Any = MISSING  # typed by its own schema (harness.config.interventions)
    benchmark: Any = MISSING  # typed by its own schema (harness.config.benchmarks)
    decoding: DecodingConfig = MISSING
    judge: JudgeConfig = MISSING
    run: RunConfig = MISSING
    answers: Optional[str] = MISSING  # score-only: an answers file of any tool
    answers_name: Optional[str] = MISSING
    seed: int = MISSING
    results_store: str = MISSING
    optimized_metric: Optional[str] = MISSING  # a sweep's objective: the job returns this metric of its scores
