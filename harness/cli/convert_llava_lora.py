"""Convert a LoRA adapter saved by the original LLaVA codebase to transformers' LlavaForConditionalGeneration names.

    halluc-bench-convert-lora IN_DIR OUT_DIR [--no-non-lora] [--base-model NAME]
                                         [--check-base MODEL_DIR]

IN_DIR is what haotian-liu/LLaVA's `train.py` writes with `--lora_enable True` (and what the released
"Less is More" adapters, e.g. yuezih/llava-v1.5-7b-selective-23k-lora, hold): `adapter_config.json`,
`adapter_model.safetensors` or `adapter_model.bin` (peft names such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`) and usually `non_lora_trainables.bin`
(the full weights trained besides LoRA, e.g. `base_model.model.model.mm_projector.0.weight` when the
projector was tuned with `--mm_projector_lr`; LLaVA's `builder.py` loads them into the base model before
merging the LoRA weights). The `.bin` files are read with `torch.load(weights_only=True)` only.

OUT_DIR gets a peft adapter for `model.adapter=OUT_DIR` (`harness.models.loader.load_adapter`):
LoRA weights under the transformers v5 module paths, non-LoRA weights as peft `modules_to_save`
(so `merge_and_unload` puts them in place, as LLaVA's builder does), `target_modules` rewritten to the
exact converted module paths (LLaVA's leaf names like `q_proj` would also hit CLIP's attention in the
transformers model), `modules_to_save` mapped, plus `conversion.json` (old name -> new name).

Name map (LLaVA LlavaLlamaForCausalLM -> transformers v5 LlavaForConditionalGeneration):
  model.layers.N.<self_attn|mlp|*_layernorm>...      -> model.language_model.layers.N....
  model.embed_tokens / model.norm                    -> model.language_model.embed_tokens / .norm
  model.mm_projector.0 / .2  (mlp2x_gelu)            -> model.multi_modal_projector.linear_1 / linear_2
  model.vision_tower.vision_tower.vision_model.X     -> model.vision_tower.X
  lm_head                                            -> lm_head
Anything else (e.g. a `linear` projector, MPT names) is refused: exit status 2, every unmatched name listed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

PREFIX = "base_model.model."
LAYER_PARTS = r"(?:self_attn\.(?:q_proj|k_proj|v_proj|o_proj)|mlp\.(?:gate_proj|up_proj|down_proj)" \
              r"|input_layernorm|post_attention_layernorm)"
MODULE_RULES = [  # (regex on the module path without PREFIX, replacement)
    (re.compile(rf"model\.layers\.(\d+)\.({LAYER_PARTS})"), r"model.language_model.layers.\1.\2"),
    (re.compile(r"model\.embed_tokens"), "model.language_model.embed_tokens"),
    (re.compile(r"model\.norm"), "model.language_model.norm"),
    (re.compile(r"model\.mm_projector\.0"), "model.multi_modal_projector.linear_1"),
    (re.compile(r"model\.mm_projector\.2"), "model.multi_modal_projector.linear_2"),
    (re.compile(r"model\.vision_tower\.vision_tower\.vision_model\.(.+)"), r"model.vision_tower.\1"),
    (re.compile(r"lm_head"), "lm_head"),
]
LORA_SUFFIX = re.compile(r"\.(lora_A|lora_B)(?:\.default)?\.weight$|\.(lora_embedding_A|lora_embedding_B)(?:\.default)?$")
FULL_SUFFIX = re.compile(r"\.(weight|bias)$")
# modules_to_save / target_modules entries of the original config (leaf or short names) -> new names
MODULE_NAME_MAP = {"mm_projector": "multi_modal_projector", "lm_head": "lm_head", "embed_tokens": "embed_tokens",
                   "q_proj": "q_proj", "k_proj": "k_proj", "v_proj": "v_proj", "o_proj": "o_proj",
                   "gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}


class ConversionError(ValueError):
    """Names or settings that cannot be mapped; `.unmatched` lists them."""

    def __init__(self, message: str, unmatched: list[str]):
        super().__init__(message + "\n  " + "\n  ".join(unmatched))
        self.unmatched = unmatched


def map_module(path: str) -> str | None:
    """The transformers module path for a LLaVA module path (without `base_model.model.`), or None."""
    for rule, repl in MODULE_RULES:
        if rule.fullmatch(path):
            return rule.sub(repl, path)
    return None


def split_param(name: str) -> tuple[str, str, bool] | None:
    """(module path, parameter suffix with the adapter name removed, is_lora) of a saved tensor name."""
    m = LORA_SUFFIX.search(name)
    if m:
        kind = m.group(1) or m.group(2)
        suffix = f"{kind}.weight" if m.group(1) else kind
        return name[:m.start()], suffix, True
    m = FULL_SUFFIX.search(name)
    if m:
        return name[:m.start()], m.group(1), False
    return None


def map_name(name: str) -> tuple[str, str, bool] | None:
    """(new saved name, new module path, is_lora) for a peft-saved LLaVA tensor name, or None."""
    if not name.startswith(PREFIX):
        return None
    parts = split_param(name[len(PREFIX):])
    if parts is None:
        return None
    module, suffix, is_lora = parts
    new_module = map_module(module)
    if new_module is None:
        return None
    return f"{PREFIX}{new_module}.{suffix}", new_module, is_lora


def normalise_non_lora_name(name: str) -> str:
    """LLaVA's builder.py key clean-up, then the peft prefix: any of `base_model.model.model.X`,
    `model.model.X`, `model.X` -> `base_model.model.model.X` (and `...lm_head.*` likewise)."""
    key = name[len("base_model."):] if name.startswith("base_model.") else name
    if key.startswith("model.model.") or key.startswith("model.lm_head."):
        key = key[len("model."):]
    return PREFIX + key


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors file, or of a .bin file through torch.load(weights_only=True) only."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any refusal of the safe loader
        raise ValueError(f"{path}: not loadable with torch.load(weights_only=True) ({e}); refusing to unpickle") from e
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise ValueError(f"{path}: expected a dict of name -> tensor")
    return obj


def convert(in_dir: str | Path, out_dir: str | Path, non_lora: bool = True, base_model: str | None = None,
            check_base: str | Path | None = None) -> dict:
    """Convert IN_DIR into OUT_DIR; returns the conversion summary. Raises ConversionError on unmapped names."""
    in_dir, out_dir = Path(in_dir), Path(out_dir)
    config = json.loads((in_dir / "adapter_config.json").read_text())
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise ConversionError("only LoRA adapters are supported", [f"peft_type={config.get('peft_type')}"])
    weights_file = next((in_dir / f for f in ("adapter_model.safetensors", "adapter_model.bin")
                         if (in_dir / f).exists()), None)
    if weights_file is None:
        raise FileNotFoundError(f"{in_dir}: no adapter_model.safetensors or adapter_model.bin")
    tensors = dict(read_tensors(weights_file))
    sources = {k: weights_file.name for k in tensors}
    non_lora_file = in_dir / "non_lora_trainables.bin"
    if non_lora and non_lora_file.exists():
        for k, v in read_tensors(non_lora_file).items():
            key = normalise_non_lora_name(k)
            if key in tensors:
                raise ConversionError("a non-LoRA tensor duplicates an adapter tensor", [k])
            tensors[key] = v
            sources[key] = non_lora_file.name

    bad_settings = [f"{k}={config[k]!r}" for k in ("rank_pattern", "alpha_pattern") if config.get(k)]
    if bad_settings:
        raise ConversionError("per-module rank/alpha patterns are not converted", bad_settings)

    new_tensors: dict[str, torch.Tensor] = {}
    mapping: dict[str, str] = {}
    lora_modules: set[str] = set()
    full_modules: set[str] = set()
    unmatched: list[str] = []
    for name in sorted(tensors):
        mapped = map_name(name)
        if mapped is None:
            unmatched.append(f"{name}  ({sources[name]})")
            continue
        new_name, module, is_lora = mapped
        if new_name in new_tensors:
            unmatched.append(f"{name}  (maps onto {new_name} twice)")
            continue
        new_tensors[new_name] = tensors[name].contiguous()
        mapping[name] = new_name
        (lora_modules if is_lora else full_modules).add(module)

    # modules_to_save: the mapped entries of the original config plus the modules of full tensors
    modules_to_save: set[str] = set()
    for entry in config.get("modules_to_save") or []:
        if entry in MODULE_NAME_MAP:
            modules_to_save.add(MODULE_NAME_MAP[entry])
        else:
            new = map_module(entry.removeprefix(PREFIX))
            (modules_to_save.add(new) if new else unmatched.append(f"modules_to_save entry {entry!r}"))
    for module in full_modules:
        if module.startswith("model.multi_modal_projector."):
            modules_to_save.add("multi_modal_projector")
        elif not any(module == m or module.endswith("." + m) or m in module.split(".") for m in modules_to_save):
            modules_to_save.add(module)
    for entry in config.get("target_modules") or []:
        if isinstance(config["target_modules"], str):
            break
        if entry not in MODULE_NAME_MAP and map_module(entry.removeprefix(PREFIX)) is None:
            unmatched.append(f"target_modules entry {entry!r}")
    conflicts = sorted(m for m in lora_modules if any(re.match(rf"(^|.*\.){re.escape(s)}($|\..*)", m)
                                                      for s in modules_to_save))
    unmatched += [f"{m}  (has LoRA weights and is in modules_to_save)" for m in conflicts]
    if not lora_modules and not unmatched:
        unmatched.append("(no LoRA tensors found)")
    if unmatched:
        raise ConversionError(f"{len(unmatched)} name(s) cannot be mapped to LlavaForConditionalGeneration", unmatched)

    new_config = dict(config)
    new_config["target_modules"] = sorted(lora_modules)
    new_config["modules_to_save"] = sorted(modules_to_save) or None
    if base_model is not None:
        new_config["base_model_name_or_path"] = base_model
    if check_base is not None:
        check_against_model(new_tensors, new_config, check_base)

    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(new_tensors, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(new_config, indent=2, sort_keys=True) + "\n")
    summary = {"source": str(in_dir), "weights": weights_file.name,
               "non_lora_trainables": bool(non_lora and non_lora_file.exists()),
               "target_modules": new_config["target_modules"], "modules_to_save": new_config["modules_to_save"],
               "names": mapping}
    (out_dir / "conversion.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def check_against_model(tensors: dict[str, torch.Tensor], config: dict, model_dir: str | Path) -> None:
    """Every converted tensor names an existing module of the model at MODEL_DIR (built on the meta
    device from its config.json) with a compatible shape; raises ConversionError otherwise."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(AutoConfig.from_pretrained(str(model_dir)))
    params = dict(model.named_parameters())
    modules = dict(model.named_modules())
    problems = []
    for name, t in tensors.items():
        inner = name[len(PREFIX):]
        parts = split_param(inner)
        module, suffix, is_lora = parts
        if module not in modules:
            problems.append(f"{name}: no module {module!r}")
            continue
        if not is_lora:
            p = params.get(inner)
            if p is None or tuple(p.shape) != tuple(t.shape):
                problems.append(f"{name}: shape {tuple(t.shape)} vs model {None if p is None else tuple(p.shape)}")
            continue
        weight = params.get(f"{module}.weight")
        if weight is None or weight.dim() != 2:
            problems.append(f"{name}: module {module!r} has no 2-D weight")
            continue
        out_f, in_f = weight.shape
        if suffix == "lora_A.weight" and t.shape[1] != in_f:
            problems.append(f"{name}: in_features {t.shape[1]} vs model {in_f}")
        if suffix == "lora_B.weight" and t.shape[0] != out_f:
            problems.append(f"{name}: out_features {t.shape[0]} vs model {out_f}")
    if problems:
        raise ConversionError(f"{len(problems)} tensor(s) do not fit the model at {model_dir}", problems)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("in_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--no-non-lora", action="store_true", help="ignore non_lora_trainables.bin")
    ap.add_argument("--base-model", default=None, help="write this base_model_name_or_path into the config")
    ap.add_argument("--check-base", default=None,
                    help="a transformers model folder (config.json) to check module names and shapes against")
    args = ap.parse_args(argv)
    try:
        summary = convert(args.in_dir, args.out_dir, non_lora=not args.no_non_lora, base_model=args.base_model,
                          check_base=args.check_base)
    except (ConversionError, ValueError, FileNotFoundError) as e:
        print(f"convert_llava_lora: refused: {e}", file=sys.stderr)
        return 2
    print(f"converted {len(summary['names'])} tensors: {len(summary['target_modules'])} LoRA modules, "
          f"modules_to_save={summary['modules_to_save']} -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
