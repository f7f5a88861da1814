"""Settings that fit the model: presets a model carries per method, and the papers' defaults per model family.

    settings = resolve_settings(get_method("fmn", tag="diffusion"), "tiny-sd", {"learning_rate": 2e-3})
    settings.config          # FMNConfig: the user's keys > the model's presets > its family's defaults > FMNConfig's
    settings.sources         # {"learning_rate": "user", "train": "model preset", "seed": "method default", ...}

A method config's own defaults are its paper's, tuned for SD 1.x/2.x at 512 px; on another model they may do nothing
(on the embedded 8x8 tiny SD, FMN's paper defaults leave forget accuracy where it was). So a model directory may carry
:data:`PRESETS_FILE` beside its weights::

    {"format": "concept-erase/presets-v1", "description": "...",
     "methods": {"fmn": {"learning_rate": 0.001, ...}, "salun": {...}, "esd": {...}}}

read strictly (:func:`read_presets`: unknown fields, methods or config keys and wrong types are one line naming the
file). A model without the file (a real checkpoint) gets :data:`FAMILY_DEFAULTS` for its family, told from its UNet
config (:func:`preset_family`). :func:`resolve_settings` merges the layers and records where every key came from
(:data:`SOURCES`); :func:`concept_erase.diffusion.erasure.erase` writes both into ``erasure.json``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffusers import UNet2DConditionModel

from concept_erase.core.config import from_dict
from concept_erase.core.errors import ConceptEraseError, ConfigError, ModelLoadError, excerpt
from concept_erase.core.readers import read_json_object, require
from concept_erase.core.registry import get_method, list_methods
from concept_erase.diffusion.loading import looks_like_hub_id

__all__ = [
    "FAMILY_DEFAULTS",
    "PRESETS_FILE",
    "PRESETS_FORMAT",
    "SOURCES",
    "Settings",
    "preset_family",
    "read_presets",
    "resolve_settings",
    "unet_family",
]

PRESETS_FILE = "erasure_presets.json"
PRESETS_FORMAT = "concept-erase/presets-v1"
SOURCES = ("user", "model preset", "family default", "method default")  # highest precedence first
_FIELDS = ("format", "description", "methods")

# The papers' settings per model family, only where they differ from the method config's own defaults (which are
# FMN's SD 2.1, SalUn's and ESD's SD 1.4 settings). Keys are config keys; a family without an entry for a method
# uses the method's defaults. tests/diffusion/test_presets.py builds every entry into its method's config.
FAMILY_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "sd1": {
        # FMN (Zhang et al. 2023): configs/attn.yaml and configs/ti.yaml of SHI-Labs/Forget-Me-Not are the method's
        # defaults; the paper gives no separate SD 1.x settings. SalUn (Fan et al. 2024): SD/README.md of
        # OPTML-Group/Unlearn-Saliency (--lr 1e-5 --epochs 5 --alpha 0.5, SD 1.4) are the method's defaults.
        # ESD (Gandikota et al. 2023): train-esd.py of rohitgandikota/erasing samples the training images with 50
        # DDIM steps at start_guidance 3 (the guidance is the method default).
        "esd": {"generation_steps": 50},
    },
    "sd2": {
        # FMN's defaults are already its SD 2.1 settings (configs/attn.yaml). ESD: the same train-esd.py sampling.
        "esd": {"generation_steps": 50},
    },
    "sdxl": {
        # ESD: esd_sdxl.py of rohitgandikota/erasing (--iterations 200, --lr 2e-4, --num_inference_steps 20,
        # --guidance_scale 7, at 1024 px). FMN and SalUn publish no SDXL settings.
        "esd": {"max_train_steps": 200, "learning_rate": 2e-4, "generation_guidance_scale": 7.0},
    },
}


@dataclass(frozen=True)
class Settings:
    """A method's resolved config and where each of its keys came from."""

    config: Any  # the method's config dataclass
    sources: dict[str, str]  # {key: one of SOURCES} for every config key
    method: str
    applied: str  # "model preset", "family default" or "none" (nothing but the user's keys and the defaults)
    presets_path: str | None = None  # the presets file read, if any
    family: str | None = None  # sd1, sd2, sdxl or None

    def keys_from(self, source: str) -> list[str]:
        """The config keys whose value came from ``source`` (one of :data:`SOURCES`)."""
        return [key for key, where in self.sources.items() if where == source]

    def record(self) -> dict[str, Any]:
        """What ``erasure.json`` records about the presets (beside ``config`` and ``config_sources``)."""
        return {"applied": self.applied, "file": self.presets_path, "family": self.family}

    def summary(self) -> str:
        """One line for the command line: which preset was applied, and the user's keys."""
        if self.applied == "model preset":
            count = len(self.keys_from("model preset"))
            text = f"model preset for {self.method} from {self.presets_path} ({count} key{'s' * (count != 1)})"
        elif self.applied == "family default":
            count = len(self.keys_from("family default"))
            text = f"{self.family} family defaults for {self.method} ({count} key{'s' * (count != 1)})"
        else:
            text = f"{self.method}'s own defaults (no preset applied)"
        user = [key for key in self.keys_from("user") if key != "show_progress"]
        return f"settings: {text}" + (f"; user: {', '.join(user)}" if user else "")


def read_presets(path: str | Path) -> dict[str, dict[str, Any]]:
    """``{method: {key: value}}`` from a presets file, every method's keys checked against its config class."""
    what = "presets file"
    data = read_json_object(path, what)
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            f"{what} {path} is corrupt: unknown field {excerpt(unknown[0])}; its fields are {', '.join(_FIELDS)}"
        )
    if require(data, "format", str, path, what) != PRESETS_FORMAT:
        raise ConfigError(f"{what} {path} has format {excerpt(data['format'])}; expected {PRESETS_FORMAT!r}")
    require(data, "description", str, path, what)
    methods = require(data, "methods", dict, path, what)
    known = list_methods("diffusion")
    presets = {}
    for name, values in methods.items():
        if name not in known:
            raise ConfigError(
                f"{what} {path} is corrupt: unknown method {excerpt(name)}; diffusion methods: {', '.join(known)}"
            )
        require(methods, name, dict, path, what)
        try:  # unknown keys, types and ranges, named as methods.<name>.<key>
            from_dict(get_method(name, tag="diffusion").config_cls, values, prefix=f"methods.{name}.")
        except ConceptEraseError as exc:
            raise ConfigError(f"{what} {path} is corrupt: {exc}") from None
        presets[name] = dict(values)
    return presets


def unet_family(unet_config: dict[str, Any]) -> str | None:
    """``sdxl`` (``addition_embed_type == "text_time"``), ``sd1`` (cross-attention width 768, CLIP ViT-L), ``sd2``
    (1024, OpenCLIP ViT-H) or None (a model the family table does not know, such as the embedded tiny SD)."""
    if unet_config.get("addition_embed_type") == "text_time":
        return "sdxl"
    width = unet_config.get("cross_attention_dim")  # a list (one width per block) in some UNets: no family row
    return {768: "sd1", 1024: "sd2"}.get(width) if isinstance(width, int) else None


def preset_family(model: str | Path) -> str | None:
    """The :data:`FAMILY_DEFAULTS` family of a pipeline directory or hub id, from its ``unet/config.json`` (None
    when there is none: the pipeline loader then says what is missing). SD 1.x and 2.x are one pipeline family but
    two rows here: their papers' settings differ."""
    if looks_like_hub_id(model):
        try:  # only the UNet's config, no weights; loading the pipeline reports a missing or gated model
            return unet_family(UNet2DConditionModel.load_config(str(model), subfolder="unet"))
        except (OSError, ValueError):
            return None
    file = Path(model) / "unet" / "config.json"
    if not file.is_file():
        return None
    return unet_family(read_json_object(file, "UNet config", ModelLoadError))


def _user_keys(entry, config: dict[str, Any] | None) -> dict[str, Any]:
    """The user's config keys as a mapping, validated (their own mistakes are named before presets are merged)."""
    entry.make_config(config or {})
    return dict(config or {})


def _init_fields(config: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if f.init]


def resolve_settings(entry, model: str | Path, config: Any = None, presets: bool = True) -> Settings:
    """The config of registered method ``entry`` for ``model``: the user's ``config`` (a mapping of keys, or the
    method's config instance, taken whole) over the model's :data:`PRESETS_FILE`, else its family's
    :data:`FAMILY_DEFAULTS`, over the config class's defaults. ``presets=False``: the user's keys and the class's
    defaults only."""
    if config is not None and not isinstance(config, dict):
        if not isinstance(config, entry.config_cls):
            raise ConfigError(
                f"config for {entry.name!r} must be a {entry.config_cls.__name__}, got {type(config).__name__}"
            )
        return Settings(config, dict.fromkeys(_init_fields(config), "user"), entry.name, "none")  # taken whole
    user = _user_keys(entry, config)
    preset: dict[str, Any] = {}
    family_values: dict[str, Any] = {}
    file = Path(model) / PRESETS_FILE if not looks_like_hub_id(model) else None
    path = str(file) if presets and file is not None and file.is_file() else None
    family = preset_family(model) if presets and path is None else None
    if path is not None:
        preset = read_presets(path).get(entry.name, {})
    elif family is not None:
        family_values = FAMILY_DEFAULTS[family].get(entry.name, {})
    resolved = entry.make_config({**family_values, **preset, **user})
    layers = (("user", user), ("model preset", preset), ("family default", family_values))
    sources = {
        key: next((name for name, values in layers if key in values), "method default")
        for key in _init_fields(resolved)
    }
    applied = next((name for name in ("model preset", "family default") if name in sources.values()), "none")
    return Settings(resolved, sources, entry.name, applied, path, family)
