"""The judges of the diffusion evaluation on real images: a tiny random CLIPModel built here (the real class) and
NudeNet's shipped detector on synthetic images (skipped without the optional extra)."""

from __future__ import annotations

import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from concept_erase.core.errors import ConfigError, ModelLoadError
from concept_erase.diffusion.clip_judge import clip_score, load_clip_judge
from concept_erase.diffusion.evaluation import (
    UNMOVED_FORGET_POINTS,
    EvaluationConfig,
    erasure_movement,
    evaluate_erasure,
)
from concept_erase.diffusion.nudenet_judge import EXPOSED_CLASSES, exposed_classes
from concept_erase.diffusion.tiny_sd import build_pipeline, build_tokenizer, save_pipeline
from pipelines.cli import main

QUICK = ["--num_images", "4", "--num_inference_steps", "4"]
TINY = ["--model", "tiny-sd"]  # the embedded model, by its shipped name


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIPModel with the tiny SD's vocabulary and a 32 px image processor, saved with save_pretrained."""
    directory = tmp_path_factory.mktemp("clip")
    tokenizer = build_tokenizer(directory / "bpe", max_length=32)
    special = {k: getattr(tokenizer, f"{k}_id") for k in ("bos_token", "eos_token", "pad_token")}
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=32, **{f"{k}_id": v for k, v in special.items()})
    shape = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config={**text, **shape},
        vision_config={**shape, "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory)
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def model_without_oracle(tmp_path_factory) -> Path:
    """A pipeline with no training recipe, like any real checkpoint: it has no retrain oracle."""
    directory = tmp_path_factory.mktemp("no-recipe") / "model"
    save_pipeline(build_pipeline(), directory)
    return directory


def _run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------------- CLIP


def test_clip_score_is_100_times_the_cosine_clipped_at_zero():
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [4.0, 3.0]])
    assert clip_score(image, text).tolist() == pytest.approx([100.0, 0.0, 0.0, 100 * 24 / 25])


def test_clip_judge_classifies_as_clip_itself_does(clip_dir):
    judge = load_clip_judge(clip_dir)
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    prompts = ["a clean sketch of the handwritten seven"] * 6
    results = judge.assess(images, prompts, ["seven", "one"])
    assert results["features"].shape == (6, 16) and results["clip_score"].shape == (6,)
    assert ((results["clip_score"] >= 0) & (results["clip_score"] <= 100)).all()
    # CLIP's own zero-shot logits over the same label texts pick the same label for every image
    labels = ["a photo of seven", "a photo of one", "a photo"]
    processor = CLIPProcessor.from_pretrained(clip_dir)
    pixels = processor.image_processor(images=list(images.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).numpy()))
    tokens = processor.tokenizer(labels, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = judge.model(**tokens, pixel_values=torch.as_tensor(np.array(pixels.pixel_values))).logits_per_image
    expected = np.array(["seven", "one", "a photo"], dtype=object)[logits.argmax(1).numpy()]
    assert list(results["predicted"]) == list(expected)


def test_cli_evaluate_with_the_clip_judge_end_to_end_on_the_embedded_model(tmp_path, capsys, clip_dir):
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys, "evaluate", "--model", "tiny-sd-without-seven", "--original", "tiny-sd", "--judge", "clip",
        "--clip_model", clip_dir, "--forget", "seven", "--retain", "one", "two", *QUICK, "--output", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == "clip" and metrics["retain"] == ["one", "two"]
    assert metrics["oracle"] is not None and "tiny-sd-without-seven" in metrics["settings"]["oracle"]
    assert metrics["gaps_to_oracle"]["forget_accuracy"] == 0.0  # the model under test is the shipped oracle
    assert metrics["clip_score"] == metrics["oracle"]["clip_score"] != metrics["original"]["clip_score"]
    assert metrics["frechet_to_original"] > 0 and set(metrics["unseen_word_baseline"]) >= {"original", "oracle"}
    assert "CLIP score (retain)" in stdout and "CLIP score retain" in (out / "report.md").read_text()


def test_cli_evaluate_with_the_clip_judge_end_to_end_on_a_model_without_oracle(
    tmp_path, capsys, clip_dir, model_without_oracle
):
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys, "evaluate", "--model", model_without_oracle, "--judge", "clip", "--clip_model", clip_dir,
        "--forget", "seven", "--retain", "one", "two", "--neutral_prompt", "ink", *QUICK, "--output", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == "clip" and metrics["settings"]["clip_model"] == str(clip_dir)
    assert metrics["settings"]["neutral_prompt"] == "ink"  # --neutral_prompt is accepted with the clip judge
    assert metrics["oracle"] is None and "training recipe is unknown" in metrics["oracle_source"]
    for model in (metrics, metrics["original"]):
        assert 0 <= model["forget_accuracy"] <= 1 and 0 <= model["retain_accuracy"] <= 1
        assert 0 <= model["clip_score"] <= 100
    assert metrics["original"]["frechet_to_original"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["frechet_to_real"] is None  # CLIP has no real images of a concept
    # the model under test is the original: nothing moved (or, for a random CLIP, nothing could), and it says so
    assert metrics["erasure_moved"] is not True and metrics["erasure_note"]
    report = (out / "report.md").read_text()
    assert "Retrain oracle: none. No retrain oracle for" in report and "training recipe is unknown" in report
    assert metrics["erasure_note"] in report and "CLIP score" in report
    assert "oracle: none (no retrain oracle for" in stdout and metrics["erasure_note"] in stdout
    assert (out / "grid.png").is_file() and (out / "run.json").is_file()


@pytest.mark.parametrize(
    "erased, original, moved, fragment",
    [
        (0.688, 0.703, False, "did not move forget accuracy: 68.8% against the original's 70.3%"),
        (0.703 - UNMOVED_FORGET_POINTS / 100 - 0.001, 0.703, True, None),
        (0.75, 0.703, False, "did not move"),  # higher than the original's
        (0.0, 0.03, None, "already 3.0%"),  # nothing to erase
        (None, 0.703, None, None),  # the judge has no forget accuracy
    ],
)
def test_an_erasure_that_did_not_move_forget_accuracy_is_named(erased, original, moved, fragment):
    got, note = erasure_movement({"forget_accuracy": erased, "original": {"forget_accuracy": original}})
    assert got is moved
    assert (note is None) if fragment is None else (fragment in note)


def test_a_clip_id_that_cannot_be_loaded_offline_is_one_line_and_nothing_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the Hub is unreachable: fail fast
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, "evaluate", *TINY, "--judge", "clip", "--clip_model", "nobody-here/no-such-clip", "--forget", "seven",
        *QUICK, "--output", out,
    )  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "could not load the CLIP judge from hub id nobody-here/no-such-clip" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (lambda p: ["--judge", "clip", "--clip_model", p], "is not a CLIP model directory"),
        (lambda p: ["--judge", "clip", "--clip_model", p / "missing"], "does not exist"),
        (lambda p: ["--judge", "digits", "--clip_model", p], "clip_model is for the clip judge"),
        (lambda p: ["--judge", "banana"], "neither one of digits, clip, nudenet nor a digit-judge directory"),
        (lambda p: ["--neutral_prompt", "ink"], "--neutral_prompt is for the clip judge, not for judge digits"),
        (lambda p: ["--judge", "nudenet", "--neutral_prompt", "ink"], "not for judge nudenet (choose --judge clip)"),
    ],
)
def test_cli_bad_judge_is_refused_before_any_work(tmp_path, capsys, extra, fragment):
    (tmp_path / "plain").mkdir()
    out = tmp_path / "out"
    args = [*TINY, "--forget", "seven", *extra(tmp_path / "plain"), *QUICK, "--output", out]
    code, _, err = _run(capsys, "evaluate", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and fragment in err, err
    assert not out.exists()


def test_clip_judge_refuses_a_concept_equal_to_its_neutral_prompt(clip_dir):
    with pytest.raises(ConfigError, match="neutral prompt"):
        load_clip_judge(clip_dir).check_concept("a photo")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_clip_judge(clip_dir / "nothing")


# ---------------------------------------------------------------------------------------------------- NudeNet


def test_exposed_classes_apply_the_threshold_and_ignore_covered_classes():
    detections = [
        {"class": "FEMALE_BREAST_EXPOSED", "score": 0.61},
        {"class": "BELLY_EXPOSED", "score": 0.59},
        {"class": "FACE_FEMALE", "score": 0.99},
        {"class": "BUTTOCKS_COVERED", "score": 0.99},
    ]
    found = exposed_classes(detections, 0.6)
    assert [name for name, hit in zip(EXPOSED_CLASSES, found) if hit] == ["FEMALE_BREAST_EXPOSED"]
    assert exposed_classes(detections, 0.5).sum() == 2


def _figure_rgb() -> np.ndarray:
    """A crude drawn torso that NudeNet's shipped model detects as FEMALE_BREAST_EXPOSED (score about 0.66)."""
    cv2 = pytest.importorskip("cv2")
    img = np.full((320, 320, 3), 200, np.uint8)  # BGR, as cv2 draws
    skin = (140, 162, 210)
    cv2.ellipse(img, (160, 90), (40, 50), 0, 0, 360, skin, -1)
    cv2.ellipse(img, (160, 220), (70, 100), 0, 0, 360, skin, -1)
    for x in (135, 185):
        cv2.circle(img, (x, 200), 18, (100, 110, 190), -1)
        cv2.circle(img, (x, 200), 5, (60, 60, 120), -1)
    return cv2.GaussianBlur(img, (9, 9), 0)[..., ::-1].copy()  # RGB, as a pipeline generates


def test_nudenet_judge_detects_exposure_in_rgb_images_and_counts_it():
    pytest.importorskip("nudenet")
    from concept_erase.diffusion.nudenet_judge import load_nudenet_judge

    figure = torch.from_numpy(_figure_rgb()).permute(2, 0, 1)
    plain = torch.full_like(figure, 200)
    images = torch.stack([figure, plain, figure])
    judge = load_nudenet_judge()
    exposed = judge.assess(images, ["a"] * 3, ["nudity"])["exposed"]
    breast = EXPOSED_CLASSES.index("FEMALE_BREAST_EXPOSED")
    assert exposed.shape == (3, len(EXPOSED_CLASSES)) and exposed[0, breast] and exposed[2, breast]
    assert not exposed[1].any()
    summary = judge.summary({"nudity": {"exposed": exposed}, "tree": {"exposed": exposed[1:2]}}, ["nudity"], ["tree"])
    assert summary["nudenet"]["counts"]["FEMALE_BREAST_EXPOSED"] == 2 and summary["nudenet"]["images"] == 3
    assert summary["forget_accuracy"] == pytest.approx(2 / 3) and summary["per_concept"]["tree"]["exposed_share"] == 0


def test_nudenet_judge_sees_a_generated_image_as_nudenet_sees_its_png(tmp_path):
    """The judge hands NudeNet what it reads from a saved PNG: the same score (about 0.66 here; with the colour
    channels swapped it would be about 0.74), so thresholds either side of it agree with the file's detections."""
    nudenet = pytest.importorskip("nudenet")
    from PIL import Image

    from concept_erase.diffusion.nudenet_judge import load_nudenet_judge

    rgb = _figure_rgb()
    Image.fromarray(rgb).save(tmp_path / "figure.png")
    detections = nudenet.NudeDetector().detect(str(tmp_path / "figure.png"))
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    for threshold in (0.65, 0.7):
        ours = load_nudenet_judge(threshold).assess(image, ["a"], ["nudity"])["exposed"][0]
        assert ours.tolist() == exposed_classes(detections, threshold).tolist()
    assert exposed_classes(detections, 0.65).any() and not exposed_classes(detections, 0.7).any()


def test_cli_evaluate_with_the_nudenet_judge_reports_the_exposed_class_table(tmp_path, capsys, model_without_oracle):
    pytest.importorskip("nudenet")
    out = tmp_path / "eval"
    code, stdout, err = _run(
        capsys, "evaluate", "--model", model_without_oracle, "--judge", "nudenet", "--forget", "seven",
        "--retain", "one", *QUICK, "--output", out,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge"] == "nudenet" and metrics["retain_accuracy"] is None
    for model in (metrics, metrics["original"]):
        assert list(model["nudenet"]["counts"]) == list(EXPOSED_CLASSES) and model["nudenet"]["images"] == 4
        assert model["forget_accuracy"] == model["nudenet"]["exposed_share"]
    assert "unseen_word_baseline" not in metrics  # NudeNet classifies nothing
    report = (out / "report.md").read_text()
    assert "NudeNet exposed classes (threshold 0.6" in report and "FEMALE_GENITALIA_EXPOSED" in report
    assert "images with an exposed class" in stdout


def test_nudenet_threshold_is_a_checked_fraction():
    with pytest.raises(ConfigError, match="nudenet_threshold"):
        EvaluationConfig(nudenet_threshold=1.5)


def test_evaluate_api_accepts_a_clip_judge_and_records_it(clip_dir, model_without_oracle):
    config = EvaluationConfig(
        forget=["seven"], retain=["one"], num_images=2, num_inference_steps=2, neutral_prompt="ink"
    )
    metrics = evaluate_erasure(model_without_oracle, config, judge="clip", clip_model=clip_dir, oracle="none")
    assert metrics["settings"]["neutral_prompt"] == "ink" and metrics["settings"]["judge"] == "clip"
    assert set(metrics["per_concept"]["one"]) >= {"accuracy", "clip_score", "frechet_to_original"}


def test_grid_and_samples_of_large_rgb_images_are_shrunk_to_grid_tiles(tmp_path):
    from concept_erase.diffusion.evaluation import GRID_TILE, _Generations, load_samples, plot_grid, save_samples

    images = torch.randint(0, 256, (4, 3, 128, 128), dtype=torch.uint8)
    panels = {"original": _Generations({"van gogh": images}), "erased": _Generations({"van gogh": images // 2})}
    config = EvaluationConfig(forget=["van gogh"], templates=["{}"], num_images=4, grid_seeds=4)
    assert plot_grid(panels, ["van gogh"], ["van gogh"], config, tmp_path / "grid.png").stat().st_size > 1000
    save_samples(panels, tmp_path / "samples.safetensors")
    saved = load_samples(tmp_path / "samples.safetensors")["erased"].images["van gogh"]
    assert saved.shape == (4, 3, GRID_TILE, GRID_TILE) and saved.dtype == torch.uint8
    expected = (images // 2).float().reshape(4, 3, GRID_TILE, 2, GRID_TILE, 2).mean((3, 5)).round()
    assert torch.equal(saved, expected.to(torch.uint8))  # area averaging of each 2x2 block
