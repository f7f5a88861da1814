"""Several concepts in one erasure request: every method handles each concept, and the reports score each one.

Each method test erases two digits of the shipped tiny SD (or a random tiny pipeline) with few images and steps and
checks that the second concept is treated as the first is: its own prompts, its own tokens, its own targets.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from concept_erase.diffusion.attention import pipeline_concept_positions
from concept_erase.diffusion.base import ErasureRequest, concept_data, encode_prompts
from concept_erase.diffusion.erasure import erase, load_erased, read_erasure
from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure, render_report
from concept_erase.diffusion.families import PromptEmbeddings
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.methods import fmn, salun
from concept_erase.diffusion.methods.advunlearn import pick_adversarial
from concept_erase.diffusion.methods.fmn import FMNConfig, concept_attention
from concept_erase.diffusion.methods.salun import SalUnConfig
from concept_erase.diffusion.methods.uce import UCEConfig, _pairs
from concept_erase.diffusion.methods.uce import erase as uce_edit
from concept_erase.diffusion.report import summarize_evaluation, write_erasure_report
from concept_erase.diffusion.tiny_sd import ASSETS, DEFAULT_MODEL, TRAIN_TEMPLATES, build_pipeline

TEMPLATES = ["the number {}", "a handwritten digit {}", "{}"]
FAST = {"num_images": 3, "generation_steps": 2, "show_progress": False}
BOTH = ["seven", "two"]
RETAIN = ["four", "nine"]


@pytest.fixture(scope="module")
def base():
    return load_pipeline(DEFAULT_MODEL)


def _fresh(seed: int = 0):
    torch.manual_seed(seed)
    return build_pipeline()


def _probe(pipe, prompt: str):
    """Fixed noisy latents and a function giving a UNet's prediction for a prompt on them."""
    generator = torch.Generator().manual_seed(5)
    latents = torch.randn(8, 4, 8, 8, generator=generator)
    steps = torch.linspace(100, 900, 8).long()
    noisy = pipe.scheduler.add_noise(latents, torch.randn(latents.shape, generator=generator), steps)

    @torch.no_grad()
    def predict(unet, text: str) -> torch.Tensor:
        return unet(noisy, steps, encode_prompts(pipe, [text]).states.expand(8, -1, -1)).sample

    return predict


# ---------------------------------------------------------------------------------------------------- fmn


def _attention_on(pipe, unet, concept: str) -> float:
    """Mean attention mass on ``concept``'s tokens in its own prompts (fixed latents, timesteps and seed)."""
    prompts = [template.format(concept) for template in TEMPLATES]
    latents = torch.randn(len(prompts), 4, 8, 8, generator=torch.Generator().manual_seed(3))
    positions = pipeline_concept_positions(pipe, prompts, concept)
    return concept_attention(unet, pipe, latents, encode_prompts(pipe, prompts), positions)


def test_fmn_steers_each_concepts_own_tokens_in_its_own_prompts():
    """Erasing seven and two steers the attention on two's tokens as much as on seven's; erasing seven alone
    steers two's clearly less (the steering follows each prompt's own concept)."""
    config = FMNConfig(train="cross_attention_keys", learning_rate=2e-2, max_train_steps=10, train_batch_size=3, **FAST)
    drops = {}
    for concepts in (["seven"], BOTH):
        pipe = _fresh()
        before = {c: _attention_on(pipe, pipe.unet, c) for c in BOTH}
        outcome = fmn.erase(ErasureRequest(pipe, concepts, "tiny", RETAIN, TEMPLATES), config)
        after = {c: _attention_on(pipe, pipe.unet, c) for c in BOTH}
        drops[len(concepts)] = {c: 1 - after[c] / before[c] for c in BOTH}
        assert outcome.details["steered_tokens_per_prompt"] == 1.0  # one token per digit, in every prompt
    assert drops[2]["seven"] > 0.2 and drops[2]["two"] > 0.2, drops
    # with both erased two's attention falls as seven's does; with seven alone it falls clearly less (the keys are
    # shared, so it falls somewhat)
    assert drops[2]["two"] > 0.8 * drops[2]["seven"] and drops[1]["two"] < 0.8 * drops[1]["seven"], drops
    assert drops[2]["two"] > drops[1]["two"] + 0.1, drops


def test_fmn_textual_inversion_learns_and_steers_one_token_per_concept():
    """Each concept gets its own placeholder; each row's steered position holds its own concept's token (the same
    template puts both at the same position, and the learned states there differ)."""
    pipe = _fresh()
    request = ErasureRequest(pipe, BOTH, "tiny", RETAIN, TEMPLATES)
    config = FMNConfig(textual_inversion=True, textual_inversion_steps=3, max_train_steps=2, **FAST)
    data = concept_data(request, BOTH, config)
    states, positions, summary = fmn._inverted_inputs(request, config, data)
    assert summary["tokens"] == ["<fmn-concept-0>", "<fmn-concept-1>"]
    assert positions.sum(1).tolist() == [1] * len(data.prompts)
    n = config.num_images
    for row in range(n):  # row of seven and row n + row of two: the same template
        assert torch.equal(positions[row], positions[n + row])
        at = positions[row].nonzero()[0, 0]
        assert not torch.allclose(states[row, at], states[n + row, at])
        assert torch.allclose(states[row, :at], states[n + row, :at])  # the template's words before it: the same


# ---------------------------------------------------------------------------------------------------- salun


def test_salun_saliency_is_computed_from_every_concepts_forget_data(base):
    pipe = load_pipeline(DEFAULT_MODEL)
    config = SalUnConfig(mask_ratio=0.05, train_batch_size=3, **FAST)  # one batch per concept
    request = ErasureRequest(pipe, BOTH, "tiny-sd", RETAIN, list(TRAIN_TEMPLATES))
    both = concept_data(request, BOTH, config)
    masks = {"both": salun.saliency_mask(request, config, both)}
    for index, concept in enumerate(BOTH):
        rows = both.concept_ids == index
        only = type(both)(
            [p for p, keep in zip(both.prompts, rows.tolist()) if keep],
            both.concept_ids[rows],
            both.latents[rows],
            both.embeddings[rows],
        )
        masks[concept] = salun.saliency_mask(request, config, only)
    kept = {name: sum(int(m.sum()) for m in mask.masks.values()) for name, mask in masks.items()}
    assert kept["both"] == pytest.approx(kept["seven"], rel=0.01)  # the same ratio of weights

    def overlap(a, b):
        return sum(int((masks[a].masks[n] & masks[b].masks[n]).sum()) for n in masks[a].masks) / kept[a]

    # seven's rows are the first batch of both runs (same images, same noise draws): a mask computed from the first
    # concept's data only would equal seven's bit for bit. The two-concept mask is neither concept's alone.
    assert overlap("both", "seven") < 0.95 and overlap("both", "two") < 0.95
    assert overlap("both", "seven") > 0.3 and overlap("both", "two") > 0.3  # and shares weights with each


def test_salun_relabels_both_concepts_with_retain_concepts(tmp_path, base):
    config = {
        **FAST,
        "learning_rate": 1e-3,
        "alpha": 0.5,
        "max_train_steps": 30,
        "num_images": 4,
        "train_batch_size": 4,
        "generation_steps": 5,
        "retain_concepts": RETAIN,
    }
    record = erase("tiny-sd", "salun", BOTH, config, output_dir=tmp_path)
    assert record["concepts"] == BOTH and record["details"]["forget_images"] == 2 * 4
    template = TRAIN_TEMPLATES[1]
    predict = _probe(base, template.format("seven"))
    erased = load_erased(tmp_path).unet

    def gap(unet, concept) -> torch.Tensor:
        misaligned = torch.stack([predict(unet, template.format(c)) for c in RETAIN]).mean(0)
        return F.mse_loss(predict(unet, template.format(concept)), misaligned)

    for concept in BOTH:
        assert gap(erased, concept) < 0.5 * gap(base.unet, concept), concept


# ---------------------------------------------------------------------------------------------------- esd


def test_esd_targets_each_concept_with_its_own_negative_guidance(tmp_path, base):
    """Both concepts' predictions move to their own negatively guided targets; two's gets there only when two is
    erased too (erasing seven alone moves it less: the digits share the trained cross-attention)."""
    config = {
        **FAST,
        "train": "xattn",
        "learning_rate": 1e-3,
        "max_train_steps": 40,
        "num_images": 4,
        "train_batch_size": 4,
        "generation_steps": 5,
    }
    predict = _probe(base, "the number seven")
    uncond = predict(base.unet, "")
    targets = {c: uncond - (predict(base.unet, f"the number {c}") - uncond) for c in BOTH}

    def error(unet, concept):
        return float(F.mse_loss(predict(unet, f"the number {concept}"), targets[concept]))

    errors = {}
    for concepts in (["seven"], BOTH):
        out = tmp_path / str(len(concepts))
        record = erase("tiny-sd", "esd", concepts, config, output_dir=out)
        assert record["details"]["images"] == len(concepts) * 4
        errors[len(concepts)] = {c: error(load_erased(out).unet, c) for c in BOTH}
    for concept in BOTH:
        assert errors[2][concept] < 0.75 * error(base.unet, concept), (concept, errors)  # 20 steps each
    assert errors[2]["two"] < 0.8 * errors[1]["two"], errors


# ---------------------------------------------------------------------------------------------------- uce


def test_uce_maps_every_concept_to_its_guide():
    """W' c_i ~ W g_i for both concepts' rows after a two-concept edit (better than before, and than a one-concept
    edit does for the concept it leaves out)."""
    tiny = {"guide_concepts": ["digit", "number"], "preserve_scale": 2.0, "erase_scale": 3.0}
    pipe = load_pipeline(DEFAULT_MODEL)
    templates = list(TRAIN_TEMPLATES[:3])
    rows = {}
    for index, concept in enumerate(BOTH):
        single = ErasureRequest(pipe, [concept], "tiny-sd", RETAIN, templates)
        erased, guided, _, _ = _pairs(single, UCEConfig(**{**tiny, "guide_concepts": [tiny["guide_concepts"][index]]}))
        rows[concept] = (erased.float(), guided.float())
    name = next(n for n, _ in pipe.unet.named_parameters() if n.endswith(".attn2.to_k.weight"))
    weight = pipe.unet.get_parameter(name).detach().clone()

    def residual(w, concept):
        c, g = rows[concept]
        return float((c @ w.T - g @ weight.T).norm())

    edited = {}
    for concepts in (["seven"], BOTH):
        unet_pipe = load_pipeline(DEFAULT_MODEL)
        guides = tiny["guide_concepts"][: len(concepts)]
        outcome = uce_edit(
            ErasureRequest(unet_pipe, concepts, "tiny-sd", RETAIN, templates),
            UCEConfig(**{**tiny, "guide_concepts": guides}),
        )
        assert outcome.details["erased_rows"] == sum(len(rows[c][0]) for c in concepts)
        edited[len(concepts)] = unet_pipe.unet.get_parameter(name).detach()
    for concept in BOTH:
        assert residual(edited[2], concept) < 0.5 * residual(weight, concept), concept
    assert residual(edited[2], "two") < 0.5 * residual(edited[1], "two")


def test_erase_records_every_concept_and_keeps_them_out_of_the_retain_set(tmp_path):
    record = erase(None, "uce", ["seven", " two ", "seven"], {"guide_concepts": ["digit"]}, output_dir=tmp_path / "u")
    assert record["concepts"] == BOTH  # cleaned and deduplicated, in the order given
    assert not set(BOTH) & set(record["retain_concepts"]) and len(record["retain_concepts"]) == 8
    assert read_erasure(tmp_path / "u")["concepts"] == BOTH


# ---------------------------------------------------------------------------------------------------- adversarial


def test_each_concepts_rows_draw_the_conditionings_found_for_that_concept():
    """pick_adversarial: row (attack * C + concept) * T + template of the found conditionings, per forget row."""
    attacks, concepts, templates = 3, 2, 4
    labels = torch.arange(attacks * concepts * templates, dtype=torch.float32)
    found = PromptEmbeddings(labels[:, None, None].expand(-1, 2, 1).clone())
    concept_ids = torch.tensor([0, 0, 1, 1, 1, 0] * 20)
    template_ids = torch.tensor([0, 3, 1, 2, 3, 2] * 20)
    torch.manual_seed(0)
    rows = pick_adversarial(found, concept_ids, template_ids, concepts, templates).states[:, 0, 0].long()
    assert torch.equal(rows // templates % concepts, concept_ids) and torch.equal(rows % templates, template_ids)
    assert set((rows // (concepts * templates)).tolist()) == set(range(attacks))  # every round's attack drawn


def test_adversarial_erasure_attacks_every_concept(tmp_path):
    config = {
        "num_images": 2,
        "generation_steps": 2,
        "max_train_steps": 2,
        "train_batch_size": 2,
        "learning_rate": 1e-3,
        "retain_concepts": ["four"],
        "show_progress": False,
        "adversarial": "both",
        "adversarial_every": 2,
        "adversarial_steps": 2,
    }
    record = erase("tiny-sd", "esd", BOTH, config, output_dir=tmp_path)
    attacks = record["details"]["adversarial"]["attacks"]
    assert [a["attack"] for a in attacks] == ["ti", "prompt"]
    for attack in attacks:
        assert list(attack["per_concept"]) == BOTH and attack["prompts"] == attack["per_concept"]["seven"]["prompts"]
    prompt = next(a for a in attacks if a["attack"] == "prompt")["per_concept"]
    assert all(concept in prompt[concept]["prompts"][0] for concept in BOTH)  # each concept's own prompts attacked


# ---------------------------------------------------------------------------------------------------- reports


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A two-concept uce erasure scored against the original and the shipped seven-only oracle (tiny sizes)."""
    root = tmp_path_factory.mktemp("multi")
    erase(None, "uce", BOTH, {"guide_concepts": ["digit"]}, output_dir=root / "erase")
    evaluation = EvaluationConfig(num_images=4, num_inference_steps=4, grid_seeds=1)
    oracle = ASSETS / "tiny-sd-without-seven"  # stands in for the two-digit oracle: the layout is what is tested
    metrics = evaluate_erasure(root / "erase", evaluation, oracle=oracle, output_dir=root / "eval")
    return root, metrics


def test_evaluation_scores_and_reports_each_forgotten_concept(evaluated):
    root, metrics = evaluated
    assert metrics["forget"] == BOTH
    per = {c: metrics["per_concept"][c]["accuracy"] for c in BOTH}
    assert metrics["forget_accuracy"] == pytest.approx(sum(per.values()) / 2)
    report = (root / "eval" / "report.md").read_text()
    line = next(x for x in report.splitlines() if x.startswith("Forget acc is the mean over the 2"))
    for concept in BOTH:
        original = metrics["original"]["per_concept"][concept]["accuracy"]
        oracle = metrics["oracle"]["per_concept"][concept]["accuracy"]
        assert (
            f"{concept} {100 * per[concept]:.1f}% (original {100 * original:.1f}%, oracle {100 * oracle:.1f}%)" in line
        )
        assert f"| {concept} | forget |" in report
    single = json.loads((root / "eval" / "metrics.json").read_text()) | {"forget": ["seven"]}
    assert "Forget acc is the mean" not in render_report(single)


def _table(report: str) -> dict[str, dict[str, str]]:
    lines = [x for x in report.splitlines() if x.startswith("|")]
    start = next(i for i, x in enumerate(lines) if x.startswith("| model | forget acc"))
    head = [c.strip() for c in lines[start].strip("|").split("|")]
    out = {}
    for line in lines[start + 2 :]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(head):
            break
        out[cells[0]] = dict(zip(head, cells))
    return out


def test_erasure_report_has_a_forget_column_per_concept(evaluated, tmp_path):
    root, metrics = evaluated
    row = summarize_evaluation("uce", root / "eval" / "metrics.json")
    assert row["forget_per_concept"] == {c: metrics["per_concept"][c]["accuracy"] for c in BOTH}
    write_erasure_report([row], tmp_path)
    table = _table((tmp_path / "report.md").read_text())
    assert set(table) == {"original", "retrain oracle", "uce"}
    for concept in BOTH:
        assert table["uce"][f"forget: {concept}"] == f"{100 * metrics['per_concept'][concept]['accuracy']:.1f}%"
        for name, key in (("original", "original"), ("retrain oracle", "oracle")):
            expected = metrics[key]["per_concept"][concept]["accuracy"]
            assert table[name][f"forget: {concept}"] == f"{100 * expected:.1f}%"
    assert json.loads((tmp_path / "report.json").read_text())["rows"][0]["oracle"]["forget_per_concept"]


def test_a_one_concept_report_keeps_its_columns_and_old_metrics_still_read(evaluated, tmp_path):
    root, _ = evaluated
    metrics = json.loads((root / "eval" / "metrics.json").read_text())
    one = metrics | {"forget": ["seven"], "settings": {**metrics["settings"], "erasure": None}}
    del one["per_concept"]  # an evaluation written before per-concept scores
    (tmp_path / "m.json").write_text(json.dumps(one))
    row = summarize_evaluation("old", tmp_path / "m.json")
    assert row["forget_per_concept"] == {"seven": None}
    out = tmp_path / "report"
    out.mkdir()
    write_erasure_report([row], out)
    head = next(x for x in (out / "report.md").read_text().splitlines() if x.startswith("| model | forget acc"))
    assert head.count("|") == 9 and "forget:" not in head
