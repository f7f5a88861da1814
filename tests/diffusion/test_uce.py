"""UCE: the closed-form cross-attention edit (concept_erase.diffusion.methods.uce)."""

from __future__ import annotations

import pytest
import torch

from concept_erase.core.errors import ConfigError
from concept_erase.diffusion.base import ErasureRequest
from concept_erase.diffusion.erasure import erase, load_erased
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.methods.uce import UCEConfig, _pairs
from concept_erase.diffusion.methods.uce import erase as uce_edit
from concept_erase.diffusion.tiny_sd import TRAIN_TEMPLATES, resolve_model

TINY = {"guide_concepts": ["digit"], "preserve_scale": 2.0, "erase_scale": 3.0}


def _request(model: str = "tiny-sd") -> ErasureRequest:
    pipe = load_pipeline(resolve_model(model))
    retain = ["one", "two", "nine"]
    return ErasureRequest(pipe, ["seven"], model, retain, list(TRAIN_TEMPLATES[:3]))


def test_the_edit_solves_uces_normal_equations():
    """W' is the minimiser: the gradient of the UCE objective at W' is (numerically) zero, and not at W."""
    request = _request()
    config = UCEConfig(**TINY)
    before = {n: p.detach().double().clone() for n, p in request.unet.named_parameters() if ".attn2.to_" in n}
    erased, guided, preserved, count = _pairs(request, config)
    outcome = uce_edit(request, config)
    ps = outcome.details["preserve_scale"]
    name = next(n for n in before if n.endswith("to_k.weight"))
    w = before[name]
    w_new = dict(request.unet.named_parameters())[name].detach().double()

    def gradient(m):
        return (
            config.lamb * (m - w)
            + config.erase_scale * (m @ erased.T - w @ guided.T) @ erased
            + ps * (m - w) @ preserved.T @ preserved
        )

    assert gradient(w_new).norm() < 1e-4 * gradient(w).norm()
    assert not torch.allclose(w_new.float(), w.float())


def test_only_cross_attention_projections_change_and_the_artifact_loads(tmp_path):
    record = erase(None, "uce", ["seven"], dict(TINY), output_dir=tmp_path / "uce")
    assert record["changed_parameters"]
    assert all(".attn2.to_k." in n or ".attn2.to_v." in n for n in record["changed_parameters"])
    assert record["artifact"]["format"] == "weights" and record["steps"] == 0 and record["losses"] == []
    pipe = load_erased(tmp_path / "uce")
    base = load_pipeline(resolve_model("tiny-sd"))
    name = record["changed_parameters"][0]
    assert not torch.equal(dict(pipe.unet.named_parameters())[name], dict(base.unet.named_parameters())[name])


def test_keys_only_leaves_the_values():
    record = erase(None, "uce", ["seven"], {**TINY, "edit_values": False})
    assert record["changed_parameters"] and all(".to_k." in n for n in record["changed_parameters"])


def test_sdxl_reads_both_encoders_states(tmp_path):
    record = erase("tiny-sdxl", "uce", ["seven"], dict(TINY), output_dir=tmp_path / "x")
    assert record["changed_parameters"]
    load_erased(tmp_path / "x")


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"preserve_concepts": ["seven", "one"]}, "both erased and preserved"),
        ({"guide_concepts": ["\u00e9t\u00e9"]}, "cannot be represented"),
        ({"guide_concepts": ["one", "two"]}, "one per erased concept"),
        ({"positions": "middle"}, "positions: invalid value .middle.; accepted values"),
        ({"preserve_positions": "ends"}, "preserve_positions: invalid value .ends.; accepted values"),
        ({"guide_concepts": []}, "guide_concepts is empty"),
        ({"lamb": -1.0}, "lamb"),
        ({"lamb": 0.0, "preserve_concepts": []}, "singular: lamb is 0"),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        erase(None, "uce", ["seven"], settings)


def test_an_empty_preserve_list_preserves_nothing():
    """No preserved concepts (an empty retain list, the default preserve list): only lamb keeps W' near W."""
    record = erase(None, "uce", ["seven"], {**TINY, "retain_concepts": []})
    assert record["details"]["preserved_rows"] == 0 and record["changed_parameters"]


def test_preserve_positions_choose_the_preserved_rows_on_their_own():
    """``preserve_positions: all`` keeps every position of the preserved prompts (more rows than concept_to_end)
    and leaves the erase rows as they were."""
    same = erase(None, "uce", ["seven"], {**TINY, "preserve_positions": "concept_to_end"})
    apart = erase(None, "uce", ["seven"], {**TINY, "preserve_positions": "all"})
    assert same["details"]["preserve_positions"] == "concept_to_end" and apart["details"]["preserve_positions"] == "all"
    assert apart["details"]["erased_rows"] == same["details"]["erased_rows"]
    assert apart["details"]["preserved_rows"] > same["details"]["preserved_rows"]
