"""RECE: UCE, then closed-form adversarial embeddings erased in closed form (concept_erase.diffusion.methods.rece)."""

from __future__ import annotations

import pytest
import torch

from concept_erase.core.errors import ConfigError
from concept_erase.diffusion.base import ErasureRequest
from concept_erase.diffusion.erasure import erase, load_erased
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.methods.rece import (
    RECEConfig,
    adversarial_embedding,
    projections,
    regeneration_residual,
)
from concept_erase.diffusion.methods.rece import erase as rece_edit
from concept_erase.diffusion.methods.uce import UCEConfig, _pairs
from concept_erase.diffusion.methods.uce import erase as uce_edit
from concept_erase.diffusion.tiny_sd import TRAIN_TEMPLATES, resolve_model

TINY = {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0, "show_progress": False}


def _request(model: str = "tiny-sd") -> ErasureRequest:
    pipe = load_pipeline(resolve_model(model))
    return ErasureRequest(pipe, ["seven"], model, ["one", "two", "nine"], list(TRAIN_TEMPLATES[:3]))


def _objective(edited, original, x, c, lamb):
    return sum(((x @ new.T - c @ original[name].T) ** 2).sum() for name, new in edited.items()) + lamb * (x**2).sum()


def test_the_adversarial_embedding_minimises_its_objective():
    """Closed form: the gradient of sum ||W' x - W c||^2 + lamb ||x||^2 vanishes at x, gradient steps from x do not
    lower the objective, and gradient descent from the concept's own states stays above it."""
    request = _request()
    config = UCEConfig(**{k: v for k, v in TINY.items() if k != "show_progress"})
    original = projections(request.unet)
    erased = _pairs(request, config)[0][:12]
    uce_edit(request, config)
    edited = projections(request.unet)
    lamb = 0.05
    x = adversarial_embedding(edited, original, erased, lamb).requires_grad_(True)
    best = _objective(edited, original, x, erased, lamb)
    (grad,) = torch.autograd.grad(best, x)
    start = erased.clone().requires_grad_(True)
    (grad_start,) = torch.autograd.grad(_objective(edited, original, start, erased, lamb), start)
    assert grad.norm() < 1e-8 * grad_start.norm()
    with torch.no_grad():
        for step in (1e-3, 1e-4):  # any small move away from x makes the objective larger
            moved = x - step * torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype)
            assert _objective(edited, original, moved, erased, lamb) > best
    y = erased.clone().requires_grad_(True)
    optimiser = torch.optim.Adam([y], lr=0.05)
    for _ in range(200):
        optimiser.zero_grad()
        loss = _objective(edited, original, y, erased, lamb)
        loss.backward()
        optimiser.step()
    first = float(_objective(edited, original, erased, erased, lamb))
    assert float(best.detach()) <= float(loss.detach()) < first  # descent helps, but never beats the closed form


def test_each_round_makes_the_adversarial_embedding_regenerate_worse():
    """Right after the UCE stage the adversary regenerates the concept's keys and values far better than the
    concept's own word does; every re-solve pushes its residual up, and later adversaries do worse than the first."""
    request = _request()
    outcome = rece_edit(request, RECEConfig(**TINY, rounds=3))
    rounds = outcome.details["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert rounds[0]["residual_before"] < 0.5 * outcome.details["uce_residual"]
    for r in rounds:
        assert r["residual_after"] > 2 * r["residual_before"]
        assert r["adversarial_norm"] > 0
    assert rounds[-1]["residual_before"] > rounds[0]["residual_before"]
    # the recorded residual is the model's: recompute the last round's on the final weights
    assert (
        outcome.details["erased_rows"] > 0
        and outcome.details["round_preserved_rows"] > outcome.details["preserved_rows"]
    )


def test_residual_is_zero_for_an_unedited_model():
    request = _request()
    weights = projections(request.unet)
    states = torch.randn(5, next(iter(weights.values())).shape[1], dtype=torch.float64)
    assert regeneration_residual(weights, weights, states, states) == 0.0


def test_zero_rounds_is_exactly_uce():
    a, b = _request(), _request()
    rece_edit(a, RECEConfig(**TINY, rounds=0))
    uce_edit(b, UCEConfig(**{k: v for k, v in TINY.items() if k != "show_progress"}))
    for (name, p), q in zip(a.unet.named_parameters(), b.unet.parameters()):
        assert torch.equal(p, q), name


def test_only_cross_attention_projections_change_and_the_artifact_loads(tmp_path):
    record = erase(None, "rece", ["seven"], {**TINY, "rounds": 2}, output_dir=tmp_path / "rece")
    assert record["changed_parameters"]
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in record["changed_parameters"])
    assert record["artifact"]["format"] == "weights" and record["steps"] == 0 and record["losses"] == []
    pipe = load_erased(tmp_path / "rece")
    base = load_pipeline(resolve_model("tiny-sd"))
    ours = dict(pipe.unet.named_parameters())
    theirs = dict(base.unet.named_parameters())
    changed = {n for n in ours if not torch.equal(ours[n], theirs[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)


def test_keys_only_leaves_the_values():
    record = erase(None, "rece", ["seven"], {**TINY, "rounds": 1, "edit_values": False})
    assert record["changed_parameters"] and all(".to_k." in n for n in record["changed_parameters"])


def test_sdxl_works_in_the_concatenated_state_space(tmp_path):
    """SDXL: the projections read both encoders' states concatenated, and so does the adversarial embedding."""
    request = _request("tiny-sdxl")
    pipe = request.pipe
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert next(iter(projections(request.unet).values())).shape[1] == width
    outcome = rece_edit(request, RECEConfig(**TINY, rounds=2))
    assert len(outcome.details["rounds"]) == 2
    assert all(r["residual_after"] > r["residual_before"] for r in outcome.details["rounds"])
    record = erase("tiny-sdxl", "rece", ["seven"], {**TINY, "rounds": 1}, output_dir=tmp_path / "x")
    assert record["changed_parameters"]
    load_erased(tmp_path / "x")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rounds": -1}, "rounds must be >= 0, got -1"),
        ({"rounds": 1.5}, "rounds: expected int, got float 1.5"),
        ({"rounds": True}, "rounds: expected int, got bool"),
        ({"adversarial_lamb": -0.1}, "adversarial_lamb"),
        ({"preserve_empty_prompt": "yes"}, "preserve_empty_prompt: expected bool"),
        ({"lamb": -1.0}, "lamb"),
        ({"preserve_concepts": ["seven", "one"]}, "both erased and preserved"),  # inherited from uce
        ({"guide_concepts": ["\u00e9t\u00e9"]}, "cannot be represented"),
        ({"guide_concepts": ["one", "two"]}, "one per erased concept"),
        ({"positions": "middle"}, "positions: invalid value .middle.; accepted values"),
        ({"lamb": 0.0, "preserve_concepts": []}, "singular: lamb is 0"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        erase(None, "rece", ["seven"], {"show_progress": False, **settings})


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rounds": 1.5}, "rounds must be a whole number >= 0, got 1.5"),
        ({"rounds": True}, "rounds must be a whole number >= 0, got True"),
        ({"rounds": -2}, "rounds must be >= 0, got -2"),
        ({"adversarial_lamb": float("nan")}, "adversarial_lamb must be a finite number"),
        ({"preserve_empty_prompt": "yes"}, "preserve_empty_prompt: invalid value 'yes'; accepted values: true, false"),
    ],
)
def test_the_config_refuses_bad_values_when_built_directly(settings, message):
    with pytest.raises(ConfigError, match=message):
        RECEConfig(**settings)


def test_an_empty_preserve_list_preserves_nothing_but_the_empty_prompt():
    """No preserved concepts (an empty retain list): the UCE stage keeps W' near W through lamb only, the rounds
    also preserve the empty prompt (the paper's code)."""
    record = erase(None, "rece", ["seven"], {**TINY, "rounds": 1, "retain_concepts": []})
    assert record["details"]["preserved_rows"] == 0
    assert record["details"]["round_preserved_rows"] > 0
    record = erase(
        None, "rece", ["seven"], {**TINY, "rounds": 1, "retain_concepts": [], "preserve_empty_prompt": False}
    )
    assert record["details"]["round_preserved_rows"] == 0
