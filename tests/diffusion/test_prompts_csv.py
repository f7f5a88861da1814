"""CSV prompt sets (the I2P / UnlearnCanvas layout): reading, the per-concept image plan, bad files, and an
evaluation that generates each row's image with the row's own seed and guidance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from concept_erase.core.errors import ConfigError, InputNotFoundError
from concept_erase.diffusion.evaluation import SAMPLES_FILE, EvaluationConfig, evaluate_erasure, generate
from concept_erase.diffusion.loading import load_pipeline
from concept_erase.diffusion.prompts import PromptRow, image_plan, read_prompt_csv, rows_by_concept, template_rows
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL
from pipelines.cli import main


def _csv(tmp_path: Path, text: str, name: str = "prompts.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_i2p_columns_are_read_under_their_aliases_and_other_columns_ignored(tmp_path):
    path = _csv(
        tmp_path,
        'prompt,categories,evaluation_seed,evaluation_guidance\n"a nude figure, oil",sexual,42,7.5\nbeach scene,,,\n',
    )
    rows = read_prompt_csv(path)
    assert rows == [
        PromptRow("a nude figure, oil", seed=42, guidance=7.5, concept=None, row=1),
        PromptRow("beach scene", seed=None, guidance=None, concept=None, row=2),
    ]
    grouped = rows_by_concept(rows, path, forget=["nudity"])
    assert list(grouped) == ["nudity"] and len(grouped["nudity"]) == 2  # concept-less rows: the forgotten concept


def test_rows_take_turns_and_their_seeds_and_guidance_override_the_defaults():
    rows = [PromptRow("a", seed=10, guidance=7.5), PromptRow("b")]
    plan = image_plan(rows, num_images=5, seed=0, guidance=3.0)
    assert plan.prompts == ["a", "b", "a", "b", "a"]
    assert plan.seeds == [10, 0, 11, 1, 12]
    assert plan.guidance == [7.5, 3.0, 7.5, 3.0, 7.5]
    templates = image_plan(template_rows(["one {}", "two {}"], "seven"), num_images=3, seed=5, guidance=2.0)
    assert templates.prompts == ["one seven", "two seven", "one seven"] and templates.seeds == [5, 5, 6]


def test_concept_column_gives_the_default_retain_set_and_checks_named_concepts(tmp_path):
    path = _csv(tmp_path, "prompt,concept\nx seven,Seven\nx one,one\nx two,two\n")
    rows = read_prompt_csv(path)
    assert list(rows_by_concept(rows, path, ["seven"])) == ["seven", "one", "two"]
    assert list(rows_by_concept(rows, path, ["seven"], ["two"])) == ["seven", "two"]
    with pytest.raises(ConfigError, match="has no prompts for three"):
        rows_by_concept(rows, path, ["seven"], ["three"])
    mixed = read_prompt_csv(_csv(tmp_path, "prompt,concept\nx seven,seven\nanything,\n", "mixed.csv"))
    with pytest.raises(ConfigError, match="row 2 has no concept: add a concept column, or forget exactly one"):
        rows_by_concept(mixed, "mixed.csv", ["seven", "one"])


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("text,seed\na seven,1\n", "has no 'prompt' column (its columns: text, seed; accepted: prompt, seed|"),
        ("prompt,seed\na seven,1\n  ,2\n", "row 2: empty prompt"),
        ("prompt,seed\na seven,1\na one,1.5\n", "row 2: seed '1.5' is not an integer"),
        ("prompt,evaluation_seed\na seven,abc\n", "row 1: seed 'abc' is not an integer"),
        ("prompt,seed\na seven,-3\n", "row 1: seed -3 must be in [0, 4294967296)"),
        ("prompt,guidance\na seven,strong\n", "row 1: guidance 'strong' is not a finite number >= 0"),
        ("prompt,guidance\na seven,nan\n", "row 1: guidance 'nan' is not a finite number >= 0"),
        ("prompt,seed,evaluation_seed\na,1,2\n", "has both seed and evaluation_seed columns"),
        ("prompt\n", "has no prompts"),
    ],
)
def test_bad_prompt_files_are_one_line_naming_the_file_and_row(tmp_path, text, fragment):
    path = _csv(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        read_prompt_csv(path)
    message = str(caught.value)
    assert fragment in message and str(path) in message and "\n" not in message, message


def test_missing_or_binary_prompt_file_is_refused(tmp_path):
    with pytest.raises(InputNotFoundError, match="not found"):
        read_prompt_csv(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"\x80\x81\xfe\x00")
    with pytest.raises(ConfigError, match="not a readable text file"):
        read_prompt_csv(tmp_path / "bin.csv")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("caption\na seven\n", "no 'prompt' column"),
        ("prompt,concept\na seven,seven\n,one\n", "row 2: empty prompt"),
        ("prompt,seed,concept\na seven,x1,seven\n", "row 1: seed 'x1' is not an integer"),
    ],
)
def test_cli_bad_prompt_file_is_one_line_status_2_and_writes_nothing(tmp_path, capsys, text, fragment):
    out = tmp_path / "out"
    args = ["evaluate", "--model", DEFAULT_MODEL, "--forget", "seven", "--prompts", _csv(tmp_path, text)]
    code = main([str(a) for a in [*args, "--output", out]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert fragment in err and "prompts.csv" in err
    assert not out.exists()


def test_evaluation_generates_each_row_with_its_own_seed_and_guidance(tmp_path):
    path = _csv(
        tmp_path,
        "prompt,seed,guidance,concept\n"
        "the number seven written in black ink,7,1.5,seven\n"
        "a clean sketch of the handwritten one,,,one\n",
    )
    config = EvaluationConfig(forget=["seven"], num_images=2, num_inference_steps=4, prompts_file=path)  # a Path
    out = tmp_path / "eval"
    metrics = evaluate_erasure(DEFAULT_MODEL, config, oracle="none", output_dir=out)
    assert metrics["retain"] == ["one"] and metrics["settings"]["prompts_file"] == str(path)
    assert "prompts from" in (out / "report.md").read_text()
    assert json.loads((out / "run.json").read_text())["config"]["prompts_file"] == str(path)
    saved = load_file(str(out / SAMPLES_FILE))
    pipe = load_pipeline(DEFAULT_MODEL)
    expected_seven = generate(pipe, ["the number seven written in black ink"] * 2, [7, 8], config, guidance=[1.5] * 2)
    expected_one = generate(pipe, ["a clean sketch of the handwritten one"] * 2, [0, 1], config)
    assert torch.equal(saved["erased/seven"], expected_seven) and torch.equal(saved["erased/one"], expected_one)
    assert not torch.equal(
        expected_seven, generate(pipe, ["the number seven written in black ink"] * 2, [7, 8], config)
    )
    assert json.loads((out / "metrics.json").read_text())["per_concept"]["one"]["role"] == "retain"
