"""Settings that fit the model: presets a model carries, family defaults for real checkpoints, and their record."""

from __future__ import annotations

import json

import pytest
from diffusers import UNet2DConditionModel

from concept_erase.core.config import config_to_dict
from concept_erase.core.errors import ConfigError, ModelLoadError
from concept_erase.core.registry import get_method
from concept_erase.diffusion.erasure import erase, read_erasure
from concept_erase.diffusion.presets import (
    FAMILY_DEFAULTS,
    PRESETS_FILE,
    PRESETS_FORMAT,
    SOURCES,
    read_presets,
    resolve_settings,
    unet_family,
)
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL
from pipelines.cli import main

FAST = {"num_images": 2, "generation_steps": 2, "max_train_steps": 2, "retain_concepts": ["one"]}


def _entry(name: str):
    return get_method(name, tag="diffusion")


def _write_presets(model_dir, methods=None, **fields):
    model_dir.mkdir(parents=True, exist_ok=True)
    data = {"format": PRESETS_FORMAT, "description": "test", "methods": methods or {}, **fields}
    (model_dir / PRESETS_FILE).write_text(json.dumps(data))
    return model_dir


def _unet_dir(model_dir, **config):
    """A model directory whose ``unet/config.json`` is a real (tiny) diffusers UNet's config with ``config``."""
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        norm_num_groups=16,
        attention_head_dim=8,
        **config,
    )
    unet.save_config(model_dir / "unet")
    return model_dir


SDXL_UNET = {
    "cross_attention_dim": 64,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 80,
}


def test_user_keys_beat_the_model_preset_which_beats_the_method_defaults(tmp_path):
    model = _write_presets(tmp_path / "m", {"fmn": {"learning_rate": 1e-3, "train": "cross_attention_keys"}})
    _unet_dir(model, cross_attention_dim=768)  # an sd1-shaped UNet: the model's own presets still win
    settings = resolve_settings(_entry("fmn"), model, {"learning_rate": 5e-3, "seed": 3})
    assert settings.config.learning_rate == 5e-3 and settings.config.seed == 3
    assert settings.config.train == "cross_attention_keys" and settings.config.max_train_steps == 35
    assert settings.sources["learning_rate"] == "user" and settings.sources["seed"] == "user"
    assert settings.sources["train"] == "model preset" and settings.sources["max_train_steps"] == "method default"
    assert set(settings.sources) == set(config_to_dict(settings.config)) and set(settings.sources.values()) <= set(
        SOURCES
    )
    assert settings.record() == {"applied": "model preset", "file": str(model / PRESETS_FILE), "family": None}
    assert settings.summary() == (
        f"settings: model preset for fmn from {model / PRESETS_FILE} (1 key); user: learning_rate, seed"
    )


def test_presets_off_and_a_method_the_file_does_not_name_get_the_method_defaults(tmp_path):
    model = _write_presets(tmp_path / "m", {"fmn": {"learning_rate": 1e-3}})
    off = resolve_settings(_entry("fmn"), model, {}, presets=False)
    assert off.config.learning_rate == 2e-6 and off.applied == "none" and off.record()["file"] is None
    assert set(off.sources.values()) == {"method default"}
    other = resolve_settings(_entry("esd"), model, None)
    assert other.applied == "none" and other.config.train == "noxattn"


def test_a_config_instance_is_taken_whole():
    config = get_method("esd", tag="diffusion").config_cls(max_train_steps=7)
    settings = resolve_settings(_entry("esd"), DEFAULT_MODEL, config)
    assert settings.config.max_train_steps == 7 and settings.config.train == "noxattn"  # the preset's xattn ignored
    assert set(settings.sources.values()) == {"user"}
    assert settings.config is config and settings.applied == "none"  # not rebuilt, and no preset is said to apply
    with pytest.raises(ConfigError, match="must be a FMNConfig, got ESDConfig"):
        resolve_settings(_entry("fmn"), DEFAULT_MODEL, config)


@pytest.mark.parametrize(
    ("unet", "family"),
    [({"cross_attention_dim": 768}, "sd1"), ({"cross_attention_dim": 1024}, "sd2"), (SDXL_UNET, "sdxl")],
)
def test_a_checkpoint_without_presets_gets_its_familys_paper_defaults(tmp_path, unet, family):
    model = _unet_dir(tmp_path / "m", **unet)
    settings = resolve_settings(_entry("esd"), model, {"generation_guidance_scale": 5.0})
    expected = FAMILY_DEFAULTS[family]["esd"]
    assert settings.applied == "family default" and settings.family == family
    for key, value in expected.items():
        source = "user" if key == "generation_guidance_scale" else "family default"
        assert settings.sources[key] == source and (source == "user" or getattr(settings.config, key) == value)
    assert settings.config.generation_guidance_scale == 5.0
    assert settings.summary().startswith(f"settings: {family} family defaults for esd")
    assert resolve_settings(_entry("esd"), model, {}, presets=False).applied == "none"


def test_the_tiny_sd_is_no_family_and_fmn_has_no_sd1_defaults(tmp_path):
    tiny = _unet_dir(tmp_path / "tiny", cross_attention_dim=64)
    assert resolve_settings(_entry("esd"), tiny).applied == "none"
    sd1 = _unet_dir(tmp_path / "sd1", cross_attention_dim=768)
    settings = resolve_settings(_entry("fmn"), sd1)
    assert settings.applied == "none" and settings.family == "sd1"  # FMN's own defaults are its paper's


def test_a_unet_config_that_fits_no_row_is_no_family(tmp_path):
    assert unet_family({"cross_attention_dim": [768, 768, 768, 768]}) is None
    assert unet_family({"cross_attention_dim": 768, "addition_embed_type": "text_time"}) == "sdxl"
    model = tmp_path / "m"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text("[1]")
    with pytest.raises(ModelLoadError, match="UNet config .* is corrupt: expected a JSON object"):
        resolve_settings(_entry("esd"), model)


def test_every_family_default_is_a_valid_setting_that_differs_from_the_method_default():
    for family, methods in FAMILY_DEFAULTS.items():
        for method, values in methods.items():
            entry = _entry(method)
            config, defaults = entry.make_config(values), config_to_dict(entry.make_config({}))
            for key, value in values.items():
                assert getattr(config, key) == value != defaults[key], (family, method, key)


def test_the_shipped_tiny_sd_presets_are_read_and_applied():
    presets = read_presets(DEFAULT_MODEL / PRESETS_FILE)
    assert set(presets) == {"fmn", "salun", "esd", "uce"}
    settings = resolve_settings(_entry("fmn"), DEFAULT_MODEL, {})
    assert settings.config.train == "cross_attention_keys" and settings.config.textual_inversion
    assert settings.config.learning_rate == 1e-3 and settings.sources["learning_rate"] == "model preset"
    uce = resolve_settings(_entry("uce"), DEFAULT_MODEL, {})
    assert uce.config.preserve_positions == "all" and uce.config.guide_concepts == ["digit"]
    assert uce.sources["erase_scale"] == "model preset" and uce.sources["lamb"] == "method default"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ({"format": "other/v9"}, "has format 'other/v9'; expected 'concept-erase/presets-v1'"),
        ({"extra": 1}, "unknown field 'extra'; its fields are format, description, methods"),
        ({"methods": {"nope": {}}}, "unknown method 'nope'; diffusion methods: esd, fmn, rece, salun, uce"),
        ({"methods": {"fmn": {"learnig_rate": 1e-3}}}, "unknown key 'methods.fmn.learnig_rate' for FMNConfig"),
        ({"methods": {"esd": {"learning_rate": "fast"}}}, "methods.esd.learning_rate: expected float, got str"),
        ({"methods": {"esd": {"max_train_steps": 0}}}, "max_train_steps must be >= 1"),
        ({"methods": {"salun": [1]}}, "the field 'salun' must be a mapping"),
        ({"methods": 3}, "the field 'methods' must be a mapping"),
    ],
)
def test_a_corrupt_presets_file_is_one_line_naming_it_before_any_work(tmp_path, capsys, content, message):
    model = tmp_path / "model"
    model.mkdir()
    if isinstance(content, str):
        (model / PRESETS_FILE).write_text(content)
    else:
        _write_presets(model, **{"methods": {}, **content})
    with pytest.raises(ConfigError, match="presets file") as caught:
        resolve_settings(_entry("esd"), model)
    assert message in str(caught.value) and str(model / PRESETS_FILE) in str(caught.value)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="presets file"):
        erase(model, "esd", ["seven"], output_dir=out)
    assert main(["erase", "--method", "esd", "--concept", "seven", "--model", str(model), "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_erasure_json_records_the_resolved_config_and_each_keys_source(tmp_path, capsys):
    out = tmp_path / "esd"
    argv = ["erase", "--method", "esd", "--concept", "seven", "--output", str(out), "--quiet"]
    overrides = ["--set", *[f"{k}={v}" for k, v in FAST.items()], "learning_rate=1e-3"]
    assert main([*argv, *overrides]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    head, _, user = line.partition(" (3 keys); user: ")
    assert head == f"settings: model preset for esd from {DEFAULT_MODEL / PRESETS_FILE}"
    assert set(user.split(", ")) == {*FAST, "learning_rate"}  # show_progress (--quiet) is not worth a mention
    record = read_erasure(out)
    assert record["config"]["train"] == "xattn" and record["config"]["preserve_weight"] == 4.0
    assert record["config"]["learning_rate"] == 1e-3 and record["config_sources"]["learning_rate"] == "user"
    assert record["config_sources"]["preserve_weight"] == "model preset"
    assert record["config_sources"]["negative_guidance"] == "method default"
    assert record["presets"]["applied"] == "model preset"
    assert record["presets"]["file"].endswith(f"tiny-sd/{PRESETS_FILE}")

    plain = tmp_path / "plain"
    assert main([*argv[:-2], str(plain), "--quiet", "--no_presets", *overrides]) == 0
    assert "no preset applied" in capsys.readouterr().out
    record = read_erasure(plain)
    assert record["config"]["train"] == "noxattn" and record["config"]["preserve_weight"] == 0.0
    assert record["presets"]["applied"] == "none" and record["config_sources"]["train"] == "method default"


def test_the_erase_step_keeps_the_users_keys_and_can_turn_presets_off(tmp_path):
    from pipelines.diffusion_steps import EraseStepConfig
    from pipelines.runner import load_pipeline as load_pipeline_config

    step = EraseStepConfig(method="esd", concepts=["seven"], config={"learning_rate": 1e-3})
    assert step.config == {"learning_rate": 1e-3} and step.presets  # the presets fill the rest when it runs
    with pytest.raises(ConfigError, match="presets: expected bool"):
        load_pipeline_config({"name": "p", "steps": [{"name": "e", "step": "erase", "config": {"presets": "no"}}]})
    config = {"method": "esd", "concepts": ["seven"], "presets": False, "config": {**FAST, "show_progress": False}}
    spec = {"name": "p", "steps": [{"name": "e", "step": "erase", "config": config}]}
    load_pipeline_config(spec, output_dir=tmp_path / "run").run(log=lambda _: None)
    record = read_erasure(tmp_path / "run" / "steps" / "e")
    assert record["config"]["train"] == "noxattn" and record["presets"]["applied"] == "none"
