"""Schemas of the benchmark configs (`configs/benchmark/<choice>.yaml`), one dataclass per benchmark.

Variants of a benchmark (`mme_hallucination`, `repope`, `amber_generative`) inherit the base's YAML through
`defaults:` and share its schema. Values and their documentation live in the YAML files; the meaning of each
option is in the benchmark's module docstring. `SCHEMAS` maps a benchmark name to its schema.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional

from omegaconf import MISSING

from harness.config.schema import rule


@dataclass
class BenchmarkConfig:
    """What every benchmark config has: its name, the generation budget and the statistics settings."""

    name: str = MISSING
    max_new_tokens: int = rule(ge=1)
    limit: Optional[int] = rule(None, ge=1)  # answer only the first N items (benchmarks that support it)
    bootstrap: int = rule(ge=0)  # resamples of the confidence intervals (0: none); set in configs/config.yaml
    bootstrap_seed: int = MISSING
    # a fixed seeded tune/test split of the items (benchmarks/split.py); set in configs/config.yaml
    split_role: Optional[str] = rule(choices=("tune", "test"))  # null: every item
    split_seed: int = MISSING
    tune_fraction: float = rule(gt=0, lt=1)


@dataclass
class SmokeConfig(BenchmarkConfig):
    """The bundled smoke benchmark (benchmarks/smoke.py)."""

    ground_truth: str = MISSING
    caption_prompt: str = MISSING
    question_template: str = MISSING
    parser: str = rule(choices=("llava", "substring", "startswith", "repope"))


@dataclass
class ChairConfig(BenchmarkConfig):
    """CHAIR (benchmarks/chair.py)."""

    ground_truth: str = MISSING  # lemma_pos | singularize | a path to an imid_to_objects JSON
    image_set: str = MISSING
    image_root: Optional[str] = MISSING
    prompt: str = MISSING
    id_key: Optional[str] = MISSING
    caption_key: Optional[str] = MISSING
    fix_vocab_quirks: bool = MISSING
    workers: Optional[int] = rule(None, ge=1)  # scoring processes (null: automatic); never changes a score


@dataclass
class PopeConfig(BenchmarkConfig):
    """POPE and RePOPE (benchmarks/pope.py, repope.py)."""

    dataset: str = MISSING
    split: str = rule(choices=("random", "popular", "adversarial", "all"))
    version: str = MISSING
    parser: str = rule(choices=("llava", "substring", "startswith", "repope"))
    image_root: Optional[str] = MISSING
    question_file: Optional[str] = MISSING
    prompt_suffix: str = MISSING
    answer_key: Optional[str] = MISSING
    id_key: Optional[str] = MISSING
    llava_combined_ids: Any = MISSING  # auto | true | false


@dataclass
class MmeConfig(BenchmarkConfig):
    """MME (benchmarks/mme.py)."""

    root: Optional[str] = MISSING
    subtasks: Optional[List[str]] = MISSING
    drop_yes_no_instruction: bool = MISSING
    prompt_suffix: str = MISSING
    answer_key: Optional[str] = MISSING
    question_file: Optional[str] = MISSING


@dataclass
class Gpt4vAidedConfig(BenchmarkConfig):
    """GPT-4V-aided pairwise comparison answers (benchmarks/gpt4v_aided.py)."""

    question_file: str = MISSING
    image_root: Optional[str] = MISSING


@dataclass
class AmberConfig(BenchmarkConfig):
    """AMBER (benchmarks/amber.py)."""

    task: str = rule(choices=("all", "generative", "discriminative", "existence", "attribute", "relation"))
    image_root: Optional[str] = MISSING
    question_file: Optional[str] = MISSING
    annotation_file: Optional[str] = MISSING
    relation_file: Optional[str] = MISSING
    safe_words_file: Optional[str] = MISSING
    generative_prompt: Optional[str] = MISSING
    discriminative_suffix: str = MISSING
    answer_rule: str = rule(choices=("exact", "normalised"))
    rounding: str = rule(choices=("reference", "none"))
    spacy_model: str = MISSING
    similarity_threshold: float = rule(ge=0, le=1)
    answer_key: Optional[str] = MISSING
    id_key: Optional[str] = MISSING


@dataclass
class HallusionBenchConfig(BenchmarkConfig):
    """HallusionBench (benchmarks/hallusionbench.py)."""

    question_file: Optional[str] = MISSING
    split: str = MISSING
    image_root: Optional[str] = MISSING
    judge_mode: str = rule(choices=("rules", "judge", "rules_then_judge"))
    consistency_check: bool = MISSING
    consistency_prompt: Optional[str] = MISSING
    no_image: str = rule(choices=("blank", "skip"))
    prompt_suffix: str = MISSING
    answer_key: Optional[str] = MISSING


@dataclass
class MmhalBenchConfig(BenchmarkConfig):
    """MMHal-Bench (benchmarks/mmhal_bench.py)."""

    question_file: Optional[str] = MISSING
    split: str = MISSING
    image_root: Optional[str] = MISSING
    unparsed_rating: Optional[int] = MISSING
    answer_key: Optional[str] = MISSING


@dataclass
class ObjectHalBenchConfig(BenchmarkConfig):
    """Object HalBench (benchmarks/object_halbench.py)."""

    question_file: Optional[str] = MISSING
    split: str = MISSING
    image_root: Optional[str] = MISSING
    image_files: List[str] = MISSING
    extractor: str = rule(choices=("judge", "chair"))
    synonyms: str = rule(choices=("refine", "chair"))
    ground_truth: str = MISSING
    answer_key: Optional[str] = MISSING


SCHEMAS: dict[str, type] = {
    "smoke": SmokeConfig,
    "chair": ChairConfig,
    "pope": PopeConfig,
    "repope": PopeConfig,
    "mme": MmeConfig,
    "gpt4v_aided": Gpt4vAidedConfig,
    "amber": AmberConfig,
    "hallusionbench": HallusionBenchConfig,
    "mmhal_bench": MmhalBenchConfig,
    "object_halbench": ObjectHalBenchConfig,
}
