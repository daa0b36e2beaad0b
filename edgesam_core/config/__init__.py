"""Typed, torch-free configuration: dataclass schema, shipped presets and the YAML/``--set`` loader."""

from edgesam_core.config.config_loader import config_to_dict, load_config, preset_path, valid_keys
from edgesam_core.config.schema import STEPS, DistillConfig

__all__ = ["STEPS", "DistillConfig", "config_to_dict", "load_config", "preset_path", "valid_keys"]
