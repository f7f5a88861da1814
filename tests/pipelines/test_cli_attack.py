"""``concept-erase attack``: a working attack on an erasure directory, and bad inputs that fail with one line,
status 2, no traceback and no output directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from concept_erase.diffusion.attack import ATTACKS
from concept_erase.diffusion.erasure import erase
from concept_erase.diffusion.tiny_sd import DEFAULT_MODEL
from pipelines.cli import main
from pipelines.cli.attack import ATTACK_NAMES

ROOT = Path(__file__).resolve().parents[2]
BUDGET = ["--steps", "3", "--num_images", "4", "--eval_images", "4", "--num_inference_steps", "4", "--quiet"]


@pytest.fixture(scope="module")
def erased(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("erasure") / "esd-seven"
    config = {"num_images": 2, "generation_steps": 2, "max_train_steps": 3, "train_batch_size": 2}
    erase("tiny-sd", "esd", ["seven"], {**config, "train": "xattn", "show_progress": False}, output_dir=out)
    return out


def test_attack_names_match_the_library():
    assert ATTACK_NAMES == ATTACKS


def test_attack_is_listed_and_its_help_names_the_attacks():
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "attack", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert result.returncode == 0 and "ti|prompt" in result.stdout and "--output_dir" in result.stdout
    listing = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert "attack" in listing.stdout


def test_cli_prompt_attack_prints_the_rates_the_prompts_and_writes_the_outputs(erased, tmp_path, capsys):
    out = tmp_path / "attack"
    assert main(["attack", "--model", str(erased), "--attack", "prompt", *BUDGET, "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "attack.json").read_text())
    for name in ("attack.json", "grid.png", "loss.png", "report.md", "found.json", "run.json"):
        assert (out / name).is_file(), name
    assert metrics["attack"] == "prompt" and metrics["concept"] == "seven" and metrics["method"] == "esd"
    for name in ("original", "erased", "oracle"):
        line = next(line for line in printed.splitlines() if line.strip().startswith(f"{name}:"))
        assert f"ASR {100 * metrics['asr'][name]:.1f}% under attack" in line
        assert f"{100 * metrics['unattacked'][name]:.1f}% without it" in line
    for prompt in metrics["models"]["erased"]["prompts"]:
        assert f"attack prompt: {prompt}" in printed
    assert "budget: steps 3," in printed and "num_tokens 3" in printed and "attacked in " in printed
    assert printed.strip().splitlines()[-1] == f"wrote {out} (attack.json, grid.png, loss.png, report.md)"
    assert metrics["budget"]["eval_images"] == 4 and metrics["settings"]["num_inference_steps"] == 4

    # the same attack into an existing output: refused without --overwrite, before any work
    assert main(["attack", "--model", str(erased), "--attack", "prompt", *BUDGET, "--output_dir", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "tiny-sd", "--attack", "ti"], "the erased concept is unknown"),
        (["--attack", "ti", "--steps", "0"], "steps must be an integer >= 1"),
        (["--attack", "ti", "--num_images", "-2"], "num_images must be an integer >= 1"),
        (["--attack", "ti", "--eval_images", "0"], "eval_images must be an integer >= 1"),
        (["--attack", "prompt", "--num_tokens", "0"], "num_tokens must be an integer >= 1"),
        (["--attack", "ti", "--learning_rate", "0"], "learning_rate must be > 0"),
        (["--attack", "ti", "--num_tokens", "3"], "attack ti has none"),
        (["--attack", "ti", "--concept", "\u00e9t\u00e9"], "cannot be represented by the model's tokenizer"),
        (["--attack", "ti", "--concept", "banana"], "not one of the evaluation classifier's labels"),
        (["--model", "tiny-sdxl", "--attack", "prompt", "--concept", "seven"], "for the sdxl family"),
        (["--attack", "pez"], "accepted values: ti, prompt"),
        (["--attack", "ti", "--oracle", "no-such-oracle-dir"], "not found"),
        (["--attack", "ti", "--steps", "many"], "invalid int value"),
    ],
)
def test_cli_attack_bad_input_is_one_line_without_output(erased, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    model = [] if "--model" in argv else ["--model", str(erased)]
    assert main(["attack", *model, *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("concept-erase") and "Traceback" not in err, err
    assert message in err, err
    if "sdxl" in argv[1]:
        assert "--attack ti" in err
    assert not out.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("where", ["inside the erasure", "inside its base model"])
def test_cli_attack_output_overlapping_an_input_is_refused(erased, capsys, where):
    out = (erased if where == "inside the erasure" else DEFAULT_MODEL) / "attack"
    argv = ["attack", "--model", str(erased), "--attack", "ti", *BUDGET, "--output", str(out), "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "lies inside the input" in err, err
    assert not out.exists()
