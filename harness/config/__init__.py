"""Typed configuration: Hydra structured-config schemas, their registration, range validation, defaults.

- `register_configs()` puts the schemas in Hydra's ConfigStore: `config_schema` (the top config: model,
  decoding, run, judge are typed through it) and `<group>/schema/<name>` for each intervention and benchmark,
  which its YAML names in `defaults:` (`- schema/damro@_here_`).
- `validate(cfg)` checks every range rule (harness.config.schema) and raises a ConfigValueError naming the key.
- `group_defaults(group, choice)` composes one YAML choice (with its defaults list and schema) as a plain
  dict: what Python-side construction (`build_intervention`, `Benchmark(...)`) starts from, so a config
  given in code gets the same values as the same choice on the command line.
- `typed_node(group, values)` = the choice's defaults merged with `values`, type-checked and validated.
"""
from __future__ import annotations

import dataclasses
import math
from functools import lru_cache
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from harness.config.benchmarks import SCHEMAS as BENCHMARK_SCHEMAS
from harness.config.interventions import SCHEMAS as INTERVENTION_SCHEMAS
from harness.config.schema import Config, DecodingConfig, JudgeConfig, ModelConfig, PairwiseJudgeConfig, RunConfig
from harness.errors import ConfigValueError

GROUP_SCHEMAS = {"intervention": INTERVENTION_SCHEMAS, "benchmark": BENCHMARK_SCHEMAS}
_REGISTERED = False


def register_configs() -> None:
    """Store every schema in Hydra's ConfigStore (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(name="pairwise_judge_schema", node={"judge": PairwiseJudgeConfig})
    for group, schemas in GROUP_SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=f"{group}/schema", name=name, node=schema)
    _REGISTERED = True


def schema_of(group: str, name: str) -> type:
    """The schema dataclass of an intervention or benchmark name; a ConfigValueError lists the known names."""
    schemas = GROUP_SCHEMAS[group]
    if name not in schemas:
        raise ConfigValueError(f"{group}.name: unknown {group} {name!r}; valid choices: {', '.join(sorted(schemas))}")
    return schemas[name]


# ---- range rules ---------------------------------------------------------------------------------------------
def _check_value(key: str, value: Any, rules: Mapping[str, Any]) -> None:
    if value is None or not rules:
        return
    if "choices" in rules and value not in rules["choices"]:
        raise ConfigValueError(f"{key}: expected one of {', '.join(map(str, rules['choices']))}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and (rules.get("finite") or any(k in rules for k in ("ge", "gt", "le", "lt"))) \
            and not math.isfinite(value):
        raise ConfigValueError(f"{key}: expected a finite number, got {value!r}")
    for op, ok, word in (("ge", value >= rules.get("ge", -math.inf), ">="), ("gt", value > rules.get("gt", -math.inf), ">"),
                         ("le", value <= rules.get("le", math.inf), "<="), ("lt", value < rules.get("lt", math.inf), "<")):
        if op in rules and not ok:
            raise ConfigValueError(f"{key}: expected a number {word} {rules[op]}, got {value!r}")


def validate_node(schema: type, node: Mapping[str, Any], prefix: str) -> None:
    """Check the range rules of one schema over a (plain) config node; nested dataclass fields recurse."""
    for f in dataclasses.fields(schema):
        if f.name not in node:
            continue
        value = node[f.name]
        if dataclasses.is_dataclass(f.type) and isinstance(value, Mapping):
            validate_node(f.type, value, f"{prefix}{f.name}.")
        else:
            _check_value(f"{prefix}{f.name}", value, f.metadata)


def validate(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Every range rule of a composed top config (model, decoding, run, judge, intervention, benchmark)."""
    c = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    for key, schema in (("model", ModelConfig), ("decoding", DecodingConfig), ("run", RunConfig),
                        ("judge", JudgeConfig)):
        if isinstance(c.get(key), Mapping):
            validate_node(schema, c[key], f"{key}.")
    for group in GROUP_SCHEMAS:
        node = c.get(group)
        if isinstance(node, Mapping):
            validate_group(group, node)


def validate_group(group: str, node: Mapping[str, Any]) -> None:
    """Range rules of an intervention or benchmark node (compose members included)."""
    validate_node(schema_of(group, node.get("name")), node, f"{group}.")
    if group == "intervention" and node.get("name") == "compose":
        for i, member in enumerate(node.get("members") or []):
            validate_node(schema_of(group, member.get("name")), member, f"intervention.members[{i}].")


# ---- defaults of a choice --------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _composed(group: str, choice: str) -> dict:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", overrides=[f"{group}={choice}"])
    else:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            cfg = compose(config_name="config", overrides=[f"{group}={choice}"])
    return OmegaConf.to_container(cfg[group], resolve=False)


def group_defaults(group: str, choice: str) -> dict:
    """The values of `configs/<group>/<choice>.yaml` as composed (defaults lists applied), as a new dict."""
    import copy

    return copy.deepcopy(_composed(group, choice))


def typed_node(group: str, values: Mapping[str, Any], choice: str | None = None) -> dict:
    """`values` over the defaults of `choice` (default: values["name"]), type-checked and range-checked.

    A wrong type or an unknown key raises a ConfigValueError naming `<group>.<key>`.
    """
    values = dict(values or {})
    choice = choice or values.get("name")
    if not choice:
        raise ConfigValueError(f"{group}.name is not set")
    schema = schema_of(group, values["name"]) if values.get("name") else None
    if schema is not None and all(f.name in values for f in dataclasses.fields(schema)):
        base = {}  # a whole node (e.g. Hydra's composed one): the YAML's values would all be overridden
    else:
        base = group_defaults(group, choice)
        schema = schema_of(group, values.get("name", base.get("name")))
    node = _typed(schema, base, values, f"{group}.")
    validate_group(group, node)
    return node


def _typed(schema: type, base: Mapping[str, Any], values: Mapping[str, Any], prefix: str) -> dict:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), base, values)
        node = OmegaConf.to_container(merged, resolve=True, throw_on_missing=True)
    except Exception as e:  # omegaconf's ValidationError / ConfigKeyError / MissingMandatoryValue name the key
        raise ConfigValueError(config_error_line(e, prefix=prefix)) from None
    validate_node(schema, node, prefix)
    return node


def model_node(values: Mapping[str, Any]) -> dict:
    """A model config given in code over the YAML of its choice (`tiny` or `name`, when such a file exists)."""
    values = dict(values or {})
    choice = values.get("tiny") or values.get("name")
    try:
        base = group_defaults("model", choice) if choice else {}
    except Exception:  # no configs/model/<choice>.yaml: every key must be given
        base = {}
    return _typed(ModelConfig, base, values, "model.")


@lru_cache(maxsize=None)
def _default_choice(group: str) -> str:
    """The choice configs/config.yaml's defaults list makes for `group` (e.g. decoding -> greedy)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        cfg = compose(config_name="config", return_hydra_config=True)
    else:
        with initialize_config_module(config_module="configs", version_base="1.3"):
            cfg = compose(config_name="config", return_hydra_config=True)
    return str(cfg.hydra.runtime.choices[group])


def decoding_node(values: Mapping[str, Any] | None) -> dict:
    """A decoding config given in code over the YAML of its strategy (default: the config's default choice)."""
    values = dict(values or {})
    return _typed(DecodingConfig, group_defaults("decoding", values.get("strategy") or _default_choice("decoding")),
                  values, "decoding.")


def config_error_line(e: BaseException, prefix: str = "") -> str:
    """One line for an omegaconf / Hydra config error: `<key>: <what was wrong>`."""
    from omegaconf.errors import OmegaConfBaseException

    cause = e
    while cause.__cause__ is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    msg = str(getattr(cause, "msg", None) or cause).strip().splitlines()[0]
    key = getattr(cause, "full_key", None)
    if key is None:
        return msg
    key = f"{prefix}{key}" if prefix and not str(key).startswith(prefix) else str(key)
    return f"{key}: {_plain(msg)}"


def _plain(msg: str) -> str:
    """omegaconf's wording as `expected <type>, got <value>` where it can be read off."""
    import re

    m = re.match(r"Value '(.*?)'(?: of type '[^']*')? (?:could not be converted to|is not a valid) (\w+)", msg)
    if m:
        kind = {"Integer": "int", "Float": "float", "Boolean": "bool", "bool": "bool"}.get(m.group(2), m.group(2))
        return f"expected {kind}, got {m.group(1)!r}"
    m = re.match(r"Key '(.*)' not in '(.*)'", msg)
    if m:
        return f"unknown key {m.group(1)!r} (not an option of {m.group(2)})"
    return msg
