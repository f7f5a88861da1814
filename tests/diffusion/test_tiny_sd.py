"""The embedded tiny Stable Diffusion: tokenizer, recipe, saving/loading through diffusers, the oracle cache."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from concept_erase.core.digits import CONCEPTS, fixed_split, load_digit_arrays
from concept_erase.core.errors import ConfigError
from concept_erase.diffusion.erasure import erase, load_erased
from concept_erase.diffusion.judge import load_judge
from concept_erase.diffusion.loading import concept_token_ids
from concept_erase.diffusion.oracle import find_oracle, get_oracle
from concept_erase.diffusion.presets import PRESETS_FILE, read_presets
from concept_erase.diffusion.tiny_sd import (
    ASSETS,
    DEFAULT_MODEL,
    EVAL_TEMPLATES,
    PREDICTION_TYPES,
    RECIPE_FILE,
    RECIPE_VALUES_BEFORE_THE_KEY,
    TRAIN_TEMPLATES,
    TinySDConfig,
    _random_prompts,
    build_pipeline,
    build_tokenizer,
    read_recipe,
    save_pipeline,
    train_tiny_sd,
)

QUICK = {"vae_steps": 2, "unet_steps": 2, "batch_size": 32}


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPT_ERASE_CACHE", str(tmp_path / "cache"))


def test_tokenizer_writes_every_concept_and_rejects_what_it_cannot_write(tmp_path):
    tokenizer = build_tokenizer(tmp_path)
    pieces = {c: tokenizer.convert_ids_to_tokens(concept_token_ids(tokenizer, c)) for c in CONCEPTS}
    assert pieces["seven"] == ["seven</w>"]
    assert pieces["nine"] == ["n", "in", "e</w>"]  # merge order splits it, as real CLIP splits rare words
    assert all("".join(p).replace("</w>", "") == c for c, p in pieces.items())
    assert len(concept_token_ids(tokenizer, "xylophone")) > 1  # unknown words fall back to characters
    for bad in ("七", "", "   "):
        with pytest.raises(ConfigError, match="concept"):
            concept_token_ids(tokenizer, bad)


def test_eval_templates_are_held_out_from_training():
    assert not set(EVAL_TEMPLATES) & set(TRAIN_TEMPLATES)
    assert all("{}" in t for t in EVAL_TEMPLATES + TRAIN_TEMPLATES)


@pytest.mark.parametrize("filler_words", [0, 3, 6])
def test_random_prompts_put_the_concept_at_every_position_filler_words_allows(filler_words):
    torch.manual_seed(0)
    config = TinySDConfig(random_prompt_probability=1.0, filler_words=filler_words)
    prompts = [p.split() for p in _random_prompts(torch.full((3000,), CONCEPTS.index("seven")), config)]
    before = {words.index("seven") for words in prompts}
    after = {len(words) - 1 - words.index("seven") for words in prompts}
    assert before == after == set(range(filler_words + 1))  # every count from none to filler_words, no more
    # a held-out paraphrase with six words before the concept is covered only from filler_words = 6 on
    assert (max(before) >= len(EVAL_TEMPLATES[0].split()) - 1) == (filler_words >= 6)


@pytest.mark.parametrize("key", ["filler_words", "text_position_scale"])
def test_recipe_rejects_a_negative_filler_word_count_or_position_scale(key):
    with pytest.raises(ConfigError, match=rf"^{key} must be >= 0, got -1$"):
        TinySDConfig(**{key: -1})


def test_text_position_scale_shrinks_only_the_position_embeddings():
    def embeddings(scale):
        modules = dict(build_pipeline(TinySDConfig(text_position_scale=scale)).text_encoder.named_modules())
        return [modules[name].weight for name in ("embeddings.token_embedding", "embeddings.position_embedding")]

    (token, position), (token_small, position_small) = embeddings(1.0), embeddings(0.1)
    assert torch.equal(token, token_small)  # same seed, same words
    assert torch.allclose(position_small, 0.1 * position)
    # at CLIP's initialisation a position weighs as much as a word; scaled, the word dominates its state
    assert position.std() / token.std() > 0.5 and position_small.std() / token_small.std() < 0.2


def test_untrained_pipeline_round_trips_through_save_pretrained_and_from_pretrained(tmp_path):
    pipe = build_pipeline(TinySDConfig(unet_channels=[16, 32]))
    save_pipeline(pipe, tmp_path / "sd")
    for name in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tmp_path / "sd" / name).is_dir()
    assert (tmp_path / "sd" / "tokenizer" / "vocab.json").is_file()
    assert list((tmp_path / "sd").rglob("*.safetensors")) and not list((tmp_path / "sd").rglob("*.bin"))
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "sd")
    out = loaded(
        ["a handwritten digit seven"] * 2,
        num_inference_steps=2,
        output_type="pt",
        generator=[torch.Generator().manual_seed(i) for i in range(2)],
    ).images
    assert out.shape == (2, 1, 8, 8)


def test_oracle_recipe_removes_the_concepts_images(tmp_path):
    pipe = train_tiny_sd(TinySDConfig(exclude_concepts=["Seven", "two"], **QUICK), show_progress=False)
    _, labels = load_digit_arrays("digits")
    train_idx, _ = fixed_split(labels)
    expected = int(np.isin(labels[train_idx], [2, 7], invert=True).sum())
    assert pipe.tiny_sd_recipe["training_images"] == expected
    assert pipe.tiny_sd_recipe["recipe"]["exclude_concepts"] == ["seven", "two"]
    save_pipeline(pipe, tmp_path / "oracle")
    assert read_recipe(tmp_path / "oracle") == TinySDConfig(exclude_concepts=["two", "seven"], **QUICK)


def test_recipe_rejects_unknown_concepts_and_removing_everything():
    with pytest.raises(ConfigError, match="zero, one"):
        TinySDConfig(exclude_concepts=["banana"])
    with pytest.raises(ConfigError, match="nothing is left"):
        TinySDConfig(exclude_concepts=list(CONCEPTS))


def test_oracle_is_trained_once_then_served_from_the_cache(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    save_pipeline(train_tiny_sd(TinySDConfig(**QUICK), show_progress=False), model)
    recipe = json.loads((model / RECIPE_FILE).read_text())
    (model / RECIPE_FILE).write_text(json.dumps({**recipe, "seconds": 1131.0}))  # as if it took 19 min
    assert find_oracle(model, ["seven"]) is None
    path = get_oracle(model, ["seven"])
    assert read_recipe(path).exclude_concepts == ["seven"]
    out, err = capsys.readouterr()
    # before: what it trains and how long that should take; the bars name their phase; after: what it took
    assert "2 autoencoder + 2 UNet steps, about 19 min: the original took 1,131 s where it was trained" in out
    assert "tiny SD 1/2: autoencoder" in err and "tiny SD 2/2: UNet" in err
    assert "trained the retrain oracle in " in out and str(path) in out.splitlines()[-1]

    def fail(*args, **kwargs):
        raise AssertionError("the cached oracle must not be retrained")

    with monkeypatch.context() as patched:
        patched.setattr("concept_erase.diffusion.tiny_sd.train_tiny_sd", fail)
        assert get_oracle(model, ["seven"]) == path
    # the next oracle's estimate takes the fastest recorded run of the recipe: the cached oracle's seconds, not 1,131
    seconds = json.loads((path / RECIPE_FILE).read_text())["seconds"]
    get_oracle(model, ["two"])
    out, _ = capsys.readouterr()
    assert f"about 1 min: the oracle without seven took {seconds:,.0f} s where it was trained" in out
    assert StableDiffusionPipeline.from_pretrained(path).unet is not None


def test_shipped_oracle_matches_the_shipped_model_recipe_without_seven():
    assert find_oracle(DEFAULT_MODEL, ["seven"]) == ASSETS / "tiny-sd-without-seven"
    shipped = json.loads((DEFAULT_MODEL / RECIPE_FILE).read_text())
    assert read_recipe(DEFAULT_MODEL) == TinySDConfig()  # the shipped model is exactly the default recipe
    default = TinySDConfig().to_dict()
    assert shipped["recipe"] == {key: default[key] for key in shipped["recipe"]}  # (written before family etc.)
    # 2,897 s recorded while four trainings shared the two cores; 22-25 min beside one or two jobs (docs/diffusion.md)
    assert 0 < shipped["seconds"] <= 60 * 60


SHIPPED_ORACLES = tuple(CONCEPTS)  # one per digit


@pytest.mark.parametrize("concept", SHIPPED_ORACLES)
def test_shipped_oracles_are_found_by_recipe_and_load_with_diffusers(concept):
    path = ASSETS / f"tiny-sd-without-{concept}"
    assert find_oracle(DEFAULT_MODEL, [concept]) == path  # scored without training anything
    assert read_recipe(path) == TinySDConfig(exclude_concepts=[concept])
    assert StableDiffusionPipeline.from_pretrained(path).unet is not None


def test_shipped_assets_stay_within_the_package_budget():
    oracles = {p.name for p in ASSETS.glob("tiny-sd-without-*")}
    assert oracles == {f"tiny-sd-without-{c}" for c in SHIPPED_ORACLES}  # each one listed in the docs
    assert sum(f.stat().st_size for f in ASSETS.rglob("*") if f.is_file()) <= 60 * 2**20  # "at most about 60 MB"


def test_oracle_needs_a_known_recipe(tmp_path):
    shutil.copytree(DEFAULT_MODEL, tmp_path / "model")
    (tmp_path / "model" / RECIPE_FILE).unlink()
    with pytest.raises(ConfigError, match="training recipe is unknown"):
        get_oracle(tmp_path / "model", ["seven"])


def test_embedded_judge_is_accurate_on_held_out_real_digits():
    judge = load_judge()
    images, labels = load_digit_arrays("digits")
    _, test_idx = fixed_split(labels)
    logits, features = judge.classify(torch.from_numpy(images[test_idx]))
    accuracy = float((logits.argmax(1).numpy() == labels[test_idx]).mean())
    assert accuracy >= 0.97
    assert judge.config.test_accuracy == pytest.approx(accuracy)
    assert features.shape == (len(test_idx), judge.config.feature_dim)
    assert judge.labels == CONCEPTS


VARIANTS = [
    ({"prediction_type": "v_prediction"}, StableDiffusionPipeline),
    ({"family": "sdxl"}, StableDiffusionXLPipeline),
]


@pytest.mark.parametrize(("variant", "pipeline_class"), VARIANTS, ids=["v_prediction", "sdxl"])
def test_variants_train_save_and_load_with_diffusers_own_pipeline(tmp_path, variant, pipeline_class):
    config = TinySDConfig(**QUICK, **variant)
    save_pipeline(train_tiny_sd(config, show_progress=False), tmp_path / "model")
    assert read_recipe(tmp_path / "model") == config
    loaded = pipeline_class.from_pretrained(tmp_path / "model")
    assert type(loaded) is pipeline_class
    assert loaded.scheduler.config.prediction_type == config.prediction_type
    generator = [torch.Generator().manual_seed(i) for i in range(2)]
    out = loaded(["a handwritten digit seven"] * 2, num_inference_steps=2, output_type="pt", generator=generator)
    assert out.images.shape == (2, 1, 8, 8) and torch.isfinite(out.images).all()


def test_sdxl_variant_has_sdxl_architecture(tmp_path):
    config = TinySDConfig(family="sdxl", text_hidden_size=32, text_2_hidden_size=48)
    pipe = build_pipeline(config)
    assert type(pipe) is StableDiffusionXLPipeline
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.tokenizer_2.pad_token == "!" and pipe.tokenizer.pad_token == "<|endoftext|>"
    assert pipe.tokenizer_2.get_vocab() == pipe.tokenizer.get_vocab()
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == 32 + 48
    save_pipeline(pipe, tmp_path / "xl")
    for name in ("tokenizer", "tokenizer_2"):
        assert (tmp_path / "xl" / name / "vocab.json").is_file()
    assert StableDiffusionXLPipeline.from_pretrained(tmp_path / "xl").tokenizer_2.pad_token == "!"


def test_v_prediction_trains_a_different_unet_from_the_same_seed():
    unets = [
        train_tiny_sd(TinySDConfig(**QUICK, prediction_type=p), show_progress=False).unet for p in PREDICTION_TYPES
    ]
    weights = [dict(unet.named_parameters()) for unet in unets]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the target followed the type


def test_ema_recipe_keeps_the_averaged_unet_and_records_its_decay(tmp_path):
    quick = {**QUICK, "unet_steps": 5}
    plain = train_tiny_sd(TinySDConfig(**quick, ema_decay=0.0), show_progress=False)  # the default has EMA
    ema = train_tiny_sd(TinySDConfig(**quick, ema_decay=0.9), show_progress=False)
    plain_weights, ema_weights = dict(plain.unet.named_parameters()), dict(ema.unet.named_parameters())
    # same seed, same batches: only the averaging differs, and it moved the weights
    assert any(not torch.equal(plain_weights[k], ema_weights[k]) for k in plain_weights)
    save_pipeline(ema, tmp_path / "ema")
    assert read_recipe(tmp_path / "ema").ema_decay == 0.9
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path / "ema")
    for name, weight in loaded.unet.named_parameters():
        assert torch.equal(weight, ema_weights[name])  # what is saved is the average, not the last step


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_recipe_rejects_an_ema_decay_outside_zero_one(value):
    with pytest.raises(ConfigError, match=r"^ema_decay must be in \[0, 1\), got"):
        TinySDConfig(ema_decay=value)


def test_recipe_without_the_new_keys_reads_with_defaults(tmp_path):
    recipe = json.loads((DEFAULT_MODEL / RECIPE_FILE).read_text())
    new = ("prediction_type", "family", "text_2_hidden_size", "addition_time_embed_dim", *RECIPE_VALUES_BEFORE_THE_KEY)
    for key in new:
        recipe["recipe"].pop(key, None)
    (tmp_path / RECIPE_FILE).write_text(json.dumps(recipe))
    config = read_recipe(tmp_path)
    # what the models written before each key were trained with, whatever today's default
    assert (config.prediction_type, config.family) == ("epsilon", "sd")
    assert (config.ema_decay, config.filler_words, config.text_position_scale) == (0.0, 3, 1.0)


@pytest.mark.parametrize(
    ("key", "value", "accepted"),
    [("prediction_type", "sample", "epsilon, v_prediction"), ("family", "sd3", "sd, sdxl")],
)
def test_recipe_rejects_unknown_prediction_type_and_family(key, value, accepted):
    with pytest.raises(ConfigError, match=f"^{key}: invalid value '{value}'; accepted values: {accepted}$"):
        TinySDConfig(**{key: value})


@pytest.mark.parametrize(
    ("name", "variant", "pipeline_class"), [("tiny-sd-v", *VARIANTS[0]), ("tiny-sdxl", *VARIANTS[1])]
)
def test_shipped_variants_are_their_recipes_and_load_with_diffusers(name, variant, pipeline_class):
    path = ASSETS / name
    # today's recipe (the one tiny-sd was trained with) with one option changed
    assert read_recipe(path) == TinySDConfig(**variant)
    assert sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) <= 6 * 2**20  # "a few MB"
    loaded = pipeline_class.from_pretrained(path)
    assert type(loaded) is pipeline_class
    assert loaded.scheduler.config.prediction_type == read_recipe(path).prediction_type
    assert set(read_presets(path / PRESETS_FILE)) == {"fmn", "salun", "esd"}


def test_shipped_sdxl_model_is_erased_and_the_adapter_loads_back_into_sdxl(tmp_path):
    settings = {"max_train_steps": 2, "num_images": 1, "generation_steps": 2, "show_progress": False}
    record = erase("tiny-sdxl", "esd", ["seven"], settings, output_dir=tmp_path / "esd")
    assert record["base_model"] == "tiny-sdxl" and record["config"]["train"] == "xattn"  # its presets applied
    pipe = load_erased(tmp_path / "esd")
    assert type(pipe) is StableDiffusionXLPipeline
    out = pipe(["a handwritten digit seven"], num_inference_steps=2, output_type="pt").images
    assert out.shape == (1, 1, 8, 8) and torch.isfinite(out).all()
