"""Build a :class:`DistillConfig` from a step preset, an optional YAML file and ``--set a.b=c`` overrides.

Torch-free. Every problem (unknown key, wrong type, bad choice) of every layer is collected and reported at
once in a single :class:`ConfigError` line, with the closest valid key suggested for unknown names.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Literal, Union

from edgesam_core.config.schema import STEPS, DistillConfig
from edgesam_core.errors import ConfigError

_NONE_WORDS = {"null", "none", "~", ""}


def preset_path(step: str) -> Path:
    """Path of the shipped preset for ``step`` (``0``, ``1``, ``2``, ``3``, ``joint``, ``hq``)."""
    if step not in STEPS:
        raise ConfigError(f"Unknown step {step!r}; choose one of {', '.join(STEPS)}.")
    return Path(str(resources.files("edgesam_core.config") / "presets" / f"step{step}.yaml"))


def load_config(
    step: str,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    extra: dict[str, Any] | None = None,
) -> DistillConfig:
    """Resolve the configuration of one distillation step.

    Layers, later wins: schema defaults < ``presets/step<step>.yaml`` < ``config_file`` < ``extra`` (explicit
    CLI options, as a flat ``{"a.b": value}`` dict) < ``overrides`` (``"a.b=value"`` strings, YAML-typed).

    Raises:
        ConfigError: listing every unknown key (with a suggestion), type error and invalid choice at once.
    """
    errors: list[str] = []
    data = _read_yaml(preset_path(step), errors)
    data["step"] = step
    if config_file is not None:
        _merge(data, _read_yaml(Path(config_file), errors))
    for dotted, value in (extra or {}).items():
        _set_dotted(data, dotted, value)
    for item in overrides:
        if "=" not in item:
            errors.append(f"--set {item!r} is not of the form key=value")
            continue
        dotted, raw = item.split("=", 1)
        _set_dotted(data, dotted.strip(), _parse_scalar(raw))
    cfg = _build(DistillConfig, data, "", errors)
    if not errors:
        errors += _validate(cfg)
    if errors:
        raise ConfigError(f"Invalid distillation config ({len(errors)} problem(s)): " + "; ".join(errors))
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON and ``torch.save(weights_only)``."""
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(dataclasses.asdict(cfg))


def valid_keys(cls: type = DistillConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (``train.epochs``, ``optim.base_lr``...)."""
    keys: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys += valid_keys(tp, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def _read_yaml(path: Path, errors: list[str]) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise ConfigError(f"Config file not found: {path}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file {path} is not text (byte {exc.start} is not UTF-8); pass a YAML file") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(loaded, dict):
        errors.append(f"{path} must hold a mapping at top level")
        return {}
    return loaded


def _merge(base: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value


def _parse_scalar(raw: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _build(cls: type, data: Any, prefix: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        errors.append(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
        data = {}
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            full = f"{prefix}{key}"
            close = difflib.get_close_matches(full, valid_keys(DistillConfig), n=1, cutoff=0.6)
            if not close:
                close = [f"{prefix}{c}" for c in difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(f"unknown key '{full}'{hint}")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], f"{prefix}{f.name}.", errors)
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, f"{prefix}{f.name}", errors)
    return cls(**kwargs)


def _coerce(value: Any, tp: Any, key: str, errors: list[str]) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in _NONE_WORDS):
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key, errors)
    if origin is Literal:
        text = str(value) if not isinstance(value, bool) else value
        if text not in args:
            close = difflib.get_close_matches(str(text), [str(a) for a in args], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            errors.append(f"{key}={value!r} is not one of {', '.join(map(str, args))}{hint}")
            return args[0]
        return text
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            errors.append(f"{key} must be a list, got {value!r}")
            return tp() if origin is list else ()
        if origin is tuple:
            if len(value) != len(args):
                errors.append(f"{key} must have {len(args)} items, got {len(value)}")
                return tuple(value)
            return tuple(_coerce(v, a, key, errors) for v, a in zip(value, args))
        return [_coerce(v, args[0], key, errors) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "yes", "no", "1", "0", "on", "off"}:
            return value.lower() in {"true", "yes", "1", "on"}
        errors.append(f"{key} must be true or false, got {value!r}")
        return False
    if tp in (int, float):
        if isinstance(value, bool):
            errors.append(f"{key} must be a number, got {value!r}")
            return tp(0)
        try:
            number = float(value)
        except (TypeError, ValueError):
            errors.append(f"{key} must be a number, got {value!r}")
            return tp(0)
        if tp is int:
            if number != int(number):
                errors.append(f"{key} must be an integer, got {value!r}")
            return int(number)
        return number
    if tp is str:
        if isinstance(value, (dict, list)):
            errors.append(f"{key} must be a string, got {value!r}")
            return ""
        return str(value)
    return value


def _validate(cfg: DistillConfig) -> list[str]:
    errors = []
    t, p = cfg.train, cfg.prompts
    for key, value in (("train.epochs", t.epochs), ("train.batch_size", t.batch_size),
                       ("train.accumulation_steps", t.accumulation_steps),
                       ("train.max_nonfinite_in_a_row", t.max_nonfinite_in_a_row),
                       ("prompts.decode_iters", p.decode_iters), ("data.max_prompts", cfg.data.max_prompts)):
        if value < 1:
            errors.append(f"{key} must be >= 1, got {value}")
    if t.max_steps is not None and t.max_steps < 1:
        errors.append(f"train.max_steps must be >= 1, got {t.max_steps}")
    if p.multimask_output not in (1, 3, 4):
        errors.append(f"prompts.multimask_output must be 1, 3 or 4, got {p.multimask_output}")
    bad = [x for x in p.types if x not in ("box", "point")]
    if bad or not p.types:
        errors.append(f"prompts.types must be a non-empty subset of box, point, got {p.types}")
    if cfg.optim.lr_scale_divisor <= 0:
        errors.append("optim.lr_scale_divisor must be > 0")
    if cfg.data.dataset == "hqseg44k":
        if cfg.step != "hq":
            errors.append(f"data.dataset=hqseg44k is for --step hq only (step {cfg.step} trains on sa1b)")
        if p.decode_iters != 1:
            errors.append("prompts.decode_iters must be 1 with data.dataset=hqseg44k (no refinement clicks)")
        lc = cfg.loss
        if lc.gt_points < 1 or lc.gt_oversample < 1 or not 0 <= lc.gt_importance <= 1:
            errors.append("loss.gt_points must be >= 1, loss.gt_oversample >= 1 and loss.gt_importance in [0, 1]")
    return errors
