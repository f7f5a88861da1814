"""Attacks on erasures (concept inversion ``ti`` and adversarial prompt search ``prompt``) on the embedded tiny models:
the outputs, the attack success rates against the original and the oracle, reproducibility, the cache of the
reference models' attacks, and every bad input refused before any work."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from concept_erase.core.errors import ConfigError, InputNotFoundError
from concept_erase.diffusion import attack as attack_module
from concept_erase.diffusion.attack import AttackConfig, attack_erasure
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.inversion import PLACEHOLDER, invert_concept
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL

# a small but real budget: every attack below runs in a few seconds on one CPU thread
SMALL = {"steps": 5, "num_images": 4, "eval_images": 8, "num_inference_steps": 5, "show_progress": False}
ERASE_FAST = {"num_images": 2, "generation_steps": 2, "max_train_steps": 3, "train_batch_size": 2}


@pytest.fixture(scope="module")
def erasures(tmp_path_factory):
    """Two ESD erasures of 'seven' from the tiny SD (two learning rates): the same original, the same oracle."""
    root = tmp_path_factory.mktemp("erasures")
    for name, lr in (("a", 1e-3), ("b", 2e-3)):
        config = {**ERASE_FAST, "train": "xattn", "learning_rate": lr, "show_progress": False}
        erase("tiny-sd", "esd", ["seven"], config, output_dir=root / name)
    return root / "a", root / "b"


def _without_time(entry: dict | None) -> dict | None:
    return None if entry is None else {k: v for k, v in entry.items() if k != "attack_seconds"}


def test_ti_scores_the_three_models_caches_the_references_and_is_reproducible(erasures, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPT_ERASE_CACHE", str(tmp_path / "cache"))  # cold: this test sees its own entries only
    out = tmp_path / "ti"
    first = attack_erasure(erasures[0], AttackConfig(attack="ti", **SMALL), output_dir=out)
    for name in (
        "attack.json",
        "found.json",
        "embeddings.safetensors",
        "grid.png",
        "loss.png",
        "report.md",
        "run.json",
    ):
        assert (out / name).is_file(), name
    assert json.loads((out / "attack.json").read_text())["asr"] == first["asr"]
    assert first["concept"] == "seven" and first["method"] == "esd"  # both from erasure.json
    for name in ("original", "erased", "oracle"):
        assert 0.0 <= first["asr"][name] <= 1.0 and 0.0 <= first["unattacked"][name] <= 1.0
        assert len(first["models"][name]["losses"]) == SMALL["steps"]
        assert first["models"][name]["prompts"][0].count(PLACEHOLDER) == 1
    # the attack works on a model that knows the concept, and cannot conjure it from one that never learned it
    assert first["asr"]["original"] >= 0.5
    assert first["asr"]["oracle"] <= 0.25
    assert first["asr_gap_to_oracle"] == first["asr"]["erased"] - first["asr"]["oracle"]
    embeddings = load_file(str(out / "embeddings.safetensors"))
    assert set(embeddings) == {f"{n}/text_encoder" for n in ("original", "erased", "oracle")}
    assert first["cached"] == {"original": False, "erased": None, "oracle": False}
    stored = sorted(p.name for p in (tmp_path / "cache" / "attacks").iterdir())
    assert len(stored) == 4 and {p.rsplit(".", 1)[1] for p in stored} == {"json", "safetensors"}

    # another erasure of the same model: the original's and the oracle's attacks come from the cache, unchanged
    second = attack_erasure(erasures[1], AttackConfig(attack="ti", **SMALL), output_dir=tmp_path / "ti-b")
    assert second["cached"] == {"original": True, "erased": None, "oracle": True}
    assert second["models"]["original"] == first["models"]["original"]
    assert second["models"]["oracle"] == first["models"]["oracle"]
    assert len(list((tmp_path / "cache" / "attacks").iterdir())) == 4  # nothing new: the erased model is never cached
    assert load_file(str(tmp_path / "ti-b" / "embeddings.safetensors"))["original/text_encoder"].equal(
        embeddings["original/text_encoder"]
    )

    # the same seeded attack, computed again without the cache: the same results for every model
    again = attack_erasure(erasures[0], AttackConfig(attack="ti", **SMALL), cache=False)
    assert again["cached"] == {"original": False, "erased": None, "oracle": False}
    assert again["asr"] == first["asr"] and again["unattacked"] == first["unattacked"]
    for name in ("original", "erased", "oracle"):
        assert _without_time(again["models"][name]) == _without_time(first["models"][name])


def test_a_different_budget_is_a_different_cache_entry_and_a_damaged_one_is_recomputed(erasures, tmp_path, monkeypatch):
    monkeypatch.setenv("CONCEPT_ERASE_CACHE", str(tmp_path / "cache"))
    small = {**SMALL, "eval_images": 4, "steps": 2}
    first = attack_erasure(erasures[0], AttackConfig(attack="ti", **small), oracle="none")
    other = attack_erasure(erasures[0], AttackConfig(attack="ti", **{**small, "steps": 3}), oracle="none")
    assert first["cached"]["original"] is False and other["cached"]["original"] is False
    assert len(other["models"]["original"]["losses"]) == 3
    entries = sorted((tmp_path / "cache" / "attacks").glob("*.json"))
    assert len(entries) == 2

    # a damaged cache entry is not trusted: the attack is computed again, with the same result, and the entry replaced
    for damage in ('{"asr": 1.0}', "not json"):
        for entry in entries:
            entry.write_text(damage)
        again = attack_erasure(erasures[0], AttackConfig(attack="ti", **small), oracle="none")
        assert again["cached"]["original"] is False
        assert _without_time(again["models"]["original"]) == _without_time(first["models"]["original"])
    assert attack_erasure(erasures[0], AttackConfig(attack="ti", **small), oracle="none")["cached"]["original"] is True


def test_prompt_attack_reports_plain_text_that_tokenizes_back_to_the_optimised_ids(erasures, tmp_path):
    out = tmp_path / "prompt"
    metrics = attack_erasure(erasures[0], AttackConfig(attack="prompt", **SMALL), output_dir=out)
    assert (out / "found.json").is_file() and (out / "report.md").is_file() and (out / "grid.png").is_file()
    assert not (out / "embeddings.safetensors").exists()  # no learned token: the result is text
    tokenizer = load_pipeline(DEFAULT_MODEL).tokenizer
    budget = metrics["budget"]
    assert budget["num_tokens"] == 3 and budget["steps"] == SMALL["steps"]
    for name in ("original", "erased", "oracle"):
        entry = metrics["models"][name]
        assert 0.0 <= entry["asr"] <= 1.0
        details = entry["details"]
        assert details["round_trip"] is True
        assert len(details["prefix_ids"]) == budget["num_tokens"] == len(entry["tokens"])
        assert tokenizer(details["prefix"], add_special_tokens=False).input_ids == details["prefix_ids"]
        assert all(isinstance(p, str) and p.startswith(details["prefix"] + " ") for p in entry["prompts"])
        assert PLACEHOLDER not in " ".join(entry["prompts"])
    report = (out / "report.md").read_text()
    assert all(p in report for p in metrics["models"]["erased"]["prompts"])
    assert (
        json.loads((out / "found.json").read_text())["erased"]["prefix"]
        == metrics["models"]["erased"]["details"]["prefix"]
    )


def test_ti_leaves_the_attacked_pipelines_tokenizer_and_text_encoder_alone():
    pipe = load_pipeline(DEFAULT_MODEL)
    size, table = len(pipe.tokenizer), pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    with torch.no_grad():
        latents = pipe(
            prompt=["a handwritten digit seven"] * 2,
            generator=[torch.Generator().manual_seed(s) for s in range(2)],
            num_inference_steps=2,
            output_type="latent",
        ).images
    inverted = invert_concept(pipe, latents, "seven", ["a sketch of {}"], steps=2, learning_rate=5e-2, batch_size=2)
    assert len(pipe.tokenizer) == size and PLACEHOLDER not in pipe.tokenizer.get_vocab()
    assert pipe.text_encoder.get_input_embeddings().weight.equal(table)
    assert len(inverted.pipe.tokenizer) == size + 1 and PLACEHOLDER in inverted.pipe.tokenizer.get_vocab()
    assert inverted.pipe.unet is pipe.unet  # the UNet is shared, never trained
    assert inverted.details["embedding_moved"]["text_encoder"] > 0


def test_ti_on_sdxl_inverts_in_both_text_encoders(tmp_path):
    metrics = attack_erasure(
        "tiny-sdxl", AttackConfig(attack="ti", **{**SMALL, "eval_images": 4}), concept="seven", oracle="none"
    )
    assert metrics["models"]["oracle"] is None and metrics["asr"]["oracle"] is None
    assert metrics["models"]["erased"] == metrics["models"]["original"]  # the model under test is the original
    assert 0.0 <= metrics["asr"]["original"] <= 1.0
    assert set(metrics["models"]["original"]["details"]["embedding_moved"]) == {"text_encoder", "text_encoder_2"}


# ---------------------------------------------------------------------------------------------------- bad input


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if an attack gets as far as resolving (or training) the oracle or generating the attacker's
    images: every bad input below must be refused before."""

    def refuse(*args, **kwargs):
        raise AssertionError("the attack started working before refusing its bad input")

    monkeypatch.setattr(attack_module, "resolve_oracle", refuse)
    monkeypatch.setattr(attack_module, "_reference_latents", refuse)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attack": "pez"}, "accepted values: ti, prompt"),
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"steps": -3}, "steps must be an integer >= 1"),
        ({"num_images": 0}, "num_images must be an integer >= 1"),
        ({"eval_images": -1}, "eval_images must be an integer >= 1"),
        ({"num_tokens": 0}, "num_tokens must be an integer >= 1"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"learning_rate": -1e-3}, "learning_rate must be > 0"),
    ],
)
def test_a_bad_config_is_one_line(changes, message):
    with pytest.raises(ConfigError, match=message) as info:
        AttackConfig(**changes)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown concept", "the erased concept is unknown"),
        ("non-ascii concept", "cannot be represented by the model's tokenizer"),
        ("concept the judge cannot score", "not one of the evaluation classifier's labels"),
        ("prompt on sdxl", "not implemented for the sdxl family"),
        ("prefix longer than the context", "too long for a 14-token prefix"),
        ("missing oracle", "oracle"),
    ],
)
def test_bad_input_is_refused_before_any_work(erasures, tmp_path, no_work, case, message):
    erased = erasures[0]
    model, concept, changes, oracle = erased, None, {}, "auto"
    if case == "unknown concept":
        model = "tiny-sd"  # a plain pipeline: no erasure.json says what was erased
    elif case == "non-ascii concept":
        concept = "\u00e9t\u00e9"
    elif case == "concept the judge cannot score":
        concept = "banana"  # the tokenizer writes it (in pieces); the digit judge has no such label
    elif case == "prompt on sdxl":
        model, concept, changes = "tiny-sdxl", "seven", {"attack": "prompt"}
    elif case == "prefix longer than the context":
        changes = {"attack": "prompt", "num_tokens": 14}  # the tiny tokenizer's context holds 16 tokens
    elif case == "missing oracle":
        oracle = tmp_path / "no-such-oracle"
    out = tmp_path / "out"
    with pytest.raises((ConfigError, InputNotFoundError), match=message) as info:
        attack_erasure(model, AttackConfig(**{**SMALL, **changes}), concept=concept, oracle=oracle, output_dir=out)
    assert "\n" not in str(info.value)
    if case == "prompt on sdxl":
        assert "with ti" in str(info.value)
    assert not out.exists()
