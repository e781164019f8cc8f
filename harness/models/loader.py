"""Load a model adapter from a model config: a hub id or local folder, or a tiny offline variant."""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch

from harness.config import model_node
from harness.errors import ConfigValueError, MissingFileError
from harness.models.adapter import VLMAdapter

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def pick_device(device: str | None) -> str:
    """`auto` -> the local CUDA device when there is one (LOCAL_RANK-aware), else cpu."""
    if device and device != "auto":
        return device
    if torch.cuda.is_available():
        import os

        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


@dataclass
class ModelInfo:
    """What is known about a model before its weights load: its family object and its HF config."""

    spec: Any  # the ModelFamily
    config: Any  # the transformers PretrainedConfig
    name: str = ""
    prompt_template: str | None = None  # the prompt template in use (model config, else the family's; None: chat)

    @property
    def num_layers(self) -> int:
        """Decoder blocks of the language model."""
        return int(self.config.get_text_config().num_hidden_layers)


def checkpoint_path(cfg: Mapping[str, Any]) -> str:
    """The folder or hub id to load: the tiny model's folder (built on first use) or `model.path`, checked."""
    cfg = model_node(cfg)
    path = cfg["path"]
    if cfg["tiny"] and path:
        raise ConfigValueError(f"model {cfg['name']!r}: set either model.tiny (an offline tiny model) or model.path "
                               f"(a checkpoint), not both; use model.tiny=null to load {path!r}")
    if path and str(path).startswith(("/", "./", "../", "~")) and not Path(str(path)).expanduser().exists():
        raise MissingFileError(f"model.path={path!r}: no such local folder (hub ids look like 'org/name')")
    if cfg["tiny"]:
        from harness.models.tiny import ensure_tiny_model

        if cfg["tiny_seed"] is None:
            raise ConfigValueError(f"model.tiny_seed: the tiny model {cfg['tiny']!r} needs a seed")
        path = str(ensure_tiny_model(cfg["tiny"], int(cfg["tiny_seed"])))
    if not path:
        raise ConfigValueError(f"model {cfg['name']!r}: set model.path (hub id or local folder) or model.tiny")
    return str(path)


def load_model_info(cfg: Mapping[str, Any]) -> ModelInfo:
    """The family and HF config of a model config node, without loading weights (config.json only)."""
    from transformers import AutoConfig

    cfg = model_node(cfg)
    path = checkpoint_path(cfg)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg["trust_remote_code"])
    spec = model_family(cfg, config)
    return ModelInfo(spec, config, cfg["name"], cfg["prompt_template"] or spec.prompt_template)


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Silence the one FutureWarning peft causes on transformers 5: peft reads the deprecated
    `model.is_gradient_checkpointing` (nothing of ours does); every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def load_adapter(cfg: Mapping[str, Any]) -> VLMAdapter:
    """A VLMAdapter for a model config node (`configs/model/<name>.yaml`; a dict given in code starts from the
    YAML of its `tiny` or `name` choice)."""
    from transformers import AutoModelForImageTextToText

    cfg = model_node(cfg)
    path = checkpoint_path(cfg)
    device = pick_device(cfg["device"])
    dtype = DTYPES[cfg["dtype"]]
    if device == "cpu" and dtype in (torch.float16,):
        dtype = torch.float32  # half matmuls are unsupported or very slow on CPU
    trust = cfg["trust_remote_code"]
    kwargs: dict = dict(dtype=dtype, attn_implementation=cfg["attn_implementation"], trust_remote_code=trust)
    if cfg["device_map"]:
        kwargs["device_map"] = cfg["device_map"]
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    if not cfg["device_map"]:
        model.to(device)
    if cfg["adapter"]:
        from peft import PeftModel

        with quiet_peft():
            model = PeftModel.from_pretrained(model, cfg["adapter"]).merge_and_unload()
    model.eval()
    spec = model_family(cfg, model.config)
    processor = spec.load_processor(path, trust)
    return VLMAdapter(model, processor, spec, name=cfg["name"], prompt_template=cfg["prompt_template"],
                      system_prompt=cfg["system_prompt"])


def model_family(cfg: Mapping[str, Any], config: Any):
    """The family of a checkpoint: `model.family` when set (checked against the checkpoint's model_type),
    else the family that serves `config.model_type`."""
    from harness.models.families import family_for_model_type, get_family

    model_type = getattr(config, "model_type", None)
    if not cfg.get("family"):
        return family_for_model_type(model_type)
    spec = get_family(cfg["family"])
    if model_type not in spec.model_types:
        raise ConfigValueError(f"model.family={cfg['family']!r} serves model_type {'/'.join(spec.model_types)}, but "
                         f"{cfg.get('path') or cfg.get('tiny')!r} is a {model_type!r} checkpoint; set model.family="
                         f"{family_for_model_type(model_type).name} (or null to infer it)")
    return spec
