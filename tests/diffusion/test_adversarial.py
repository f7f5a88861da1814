"""Adversarial erasure (salun's and esd's ``adversarial``: attacks against the UNet being trained) on the tiny SD.

Tiny budgets throughout (2 forget images, a few training and attack steps): what is checked is the loop's plumbing
(validation, rounds, the attacks' record, the effect on the result, determinism), not how well it resists attacks;
the measured robustness is in docs (attack_erasure with the default budgets).
"""

from __future__ import annotations

import pytest
import torch

from concept_erase.core.errors import ConfigError
from concept_erase.core.registry import get_method
from concept_erase.diffusion.erasure import erase, load_erased, read_erasure
from concept_erase.diffusion.methods.esd import ESDConfig
from concept_erase.diffusion.methods.salun import SalUnConfig
from concept_erase.diffusion.tiny_sd import TRAIN_TEMPLATES

FAST = {
    "num_images": 2,
    "generation_steps": 2,
    "max_train_steps": 4,
    "train_batch_size": 2,
    "learning_rate": 1e-3,
    "retain_concepts": ["two"],
    "show_progress": False,
}
ADVERSARIAL = {**FAST, "adversarial": "both", "adversarial_every": 2, "adversarial_steps": 2}
CONFIGS = {"salun": SalUnConfig, "esd": ESDConfig}


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("adversarial", "pgd", ["adversarial", "pgd", "none, ti, prompt, both"]),
        ("adversarial_every", 0, ["adversarial_every", ">= 1"]),
        ("adversarial_steps", 0, ["adversarial_steps", ">= 1"]),
        ("adversarial_tokens", 0, ["adversarial_tokens", ">= 1"]),
        ("adversarial_learning_rate", 0.0, ["adversarial_learning_rate", "> 0"]),
        ("adversarial_weight", -1.0, ["adversarial_weight", ">= 0"]),
        ("adversarial_batch_size", 0, ["adversarial_batch_size", ">= 1"]),
    ],
)
@pytest.mark.parametrize("method", CONFIGS)
def test_bad_adversarial_settings_are_refused_in_one_line(method, key, value, words):
    with pytest.raises(ConfigError) as info:
        CONFIGS[method](**{key: value})
    message = str(info.value)
    assert "\n" not in message and all(w in message for w in words), message
    with pytest.raises(ConfigError):  # the same through the registry (YAML / --set route)
        get_method(method, tag="diffusion").make_config(None, [f"{key}={value}"])


@pytest.mark.parametrize("method", CONFIGS)
def test_the_prompt_attack_is_refused_on_sdxl_before_any_work(method):
    config = CONFIGS[method]
    for value in ("prompt", "both"):
        with pytest.raises(ConfigError, match=f"{method}: adversarial {value} is not implemented for SDXL.*: ti"):
            config(adversarial=value).check_family("sdxl")
    config(adversarial="ti").check_family("sdxl")  # ti works on both families
    config(adversarial="both").check_family("sd")
    assert SalUnConfig().attacks() == [] and SalUnConfig(adversarial="both").attacks() == ["ti", "prompt"]


def test_a_prefix_longer_than_the_tokenizers_room_is_refused(tmp_path):
    # the tiny tokenizer's context is 16 tokens; the shortest training prompt ("seven") takes 3 of them
    config = {**ADVERSARIAL, "adversarial": "prompt", "adversarial_tokens": 14}
    with pytest.raises(ConfigError, match="no training prompt leaves room for 14 adversarial prefix tokens"):
        erase("tiny-sd", "salun", ["seven"], config, output_dir=tmp_path / "out")


@pytest.fixture(scope="module", params=list(CONFIGS))
def runs(request, tmp_path_factory):
    """The same tiny erasure (salun, then esd) without and (twice) with the adversarial loop, and with the loop but
    its forgetting term weighted 0 (the same rounds, seeds and attacks)."""
    root = tmp_path_factory.mktemp(f"adversarial-{request.param}")
    out = {}
    weightless = {**ADVERSARIAL, "adversarial_weight": 0.0}
    for name, config in (
        ("plain", FAST),
        ("adversarial", ADVERSARIAL),
        ("again", ADVERSARIAL),
        ("weightless", weightless),
    ):
        erase("tiny-sd", request.param, ["seven"], config, output_dir=root / name)
        out[name] = root / name
    return out


def _weights(path) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in load_erased(path).unet.state_dict().items()}


def test_the_loop_attacks_before_every_round_and_records_it(runs):
    record = read_erasure(runs["adversarial"])
    found = record["details"]["adversarial"]
    assert found["rounds"] == 2 and record["steps"] == 4 and len(record["losses"]) == 4
    assert [(a["step"], a["attack"]) for a in found["attacks"]] == [(0, "ti"), (0, "prompt"), (2, "ti"), (2, "prompt")]
    # the first training template, with the inverted token / after a 3-token adversarial prefix of real words
    ti, prompt = found["attacks"][0]["prompts"][0], found["attacks"][1]["prompts"][0]
    assert ti == TRAIN_TEMPLATES[0].format("<inverted-concept>")
    assert prompt.endswith(" " + TRAIN_TEMPLATES[0].format("seven")) and len(prompt.split()) == 3 + 4
    # the second round's attacks ran against the UNet the first round trained: their losses differ
    assert found["attacks"][0]["loss"] != found["attacks"][2]["loss"]
    assert "adversarial" not in read_erasure(runs["plain"])["details"]


def test_the_loop_changes_the_result(runs):
    plain, adversarial = _weights(runs["plain"]), _weights(runs["adversarial"])
    assert any(not torch.equal(plain[k], adversarial[k]) for k in plain)
    assert read_erasure(runs["plain"])["losses"] != read_erasure(runs["adversarial"])["losses"]


def test_the_found_conditionings_enter_the_gradient(runs):
    """Only adversarial_weight differs between the two runs: with it 0 the attacks still run but teach nothing."""
    adversarial, weightless = _weights(runs["adversarial"]), _weights(runs["weightless"])
    assert any(not torch.equal(adversarial[k], weightless[k]) for k in adversarial)
    record = read_erasure(runs["weightless"])["details"]["adversarial"]
    # the first round's attacks ran on the same (original) UNet with the same seeds: they found the same
    assert record["attacks"][:2] == read_erasure(runs["adversarial"])["details"]["adversarial"]["attacks"][:2]


def test_adversarial_erasure_is_deterministic(runs):
    first, second = _weights(runs["adversarial"]), _weights(runs["again"])
    assert all(torch.equal(first[k], second[k]) for k in first)
    a, b = read_erasure(runs["adversarial"]), read_erasure(runs["again"])
    assert a["losses"] == b["losses"] and a["details"]["adversarial"] == b["details"]["adversarial"]


def test_the_mask_still_holds_with_the_loop(tmp_path):
    """Only salient weights move, across rounds too (each round's trainer restores the frozen entries)."""
    from concept_erase.core.saliency import SaliencyMask
    from concept_erase.diffusion.loading import load_pipeline
    from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL

    mask_file = tmp_path / "mask.safetensors"
    erase("tiny-sd", "salun", ["seven"], {**ADVERSARIAL, "save_mask_path": str(mask_file)}, output_dir=tmp_path / "o")
    mask, base = SaliencyMask.load(mask_file), load_pipeline(DEFAULT_MODEL).unet
    for name, param in load_erased(tmp_path / "o").unet.named_parameters():
        keep = mask.masks.get(name, torch.zeros_like(param, dtype=torch.bool))
        assert torch.equal(param[~keep], base.get_parameter(name)[~keep]), name
