"""The concept-erase command line: working commands, and bad inputs that fail with one line, status 2, no output."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from classifiers.models import build_model, load_model, save_model
from concept_erase import __version__
from concept_erase.core.registry import METHODS, register_method
from pipelines.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[2]  # the repository root


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=ROOT)


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("concept-erase"), lines[0]
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def assert_nothing_written(path: Path) -> None:
    assert not path.exists()
    assert not [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]


@pytest.fixture
def model_dir(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model(build_model("mlp", 10, (1, 8, 8)), tmp_path / "model")


# ---------------------------------------------------------------------------------------------------- basics


def test_version_through_the_console_script_and_python_m():
    script = Path(sys.executable).parent / "concept-erase"
    for command in ([str(script), "--version"], [sys.executable, "-m", "pipelines.cli", "--version"]):
        result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        assert result.returncode == 0 and result.stdout.strip() == f"concept-erase {__version__}"


COMMANDS = [
    *("unlearn", "bench", "erase", "evaluate", "oracle", "attack", "sequence"),
    *("run", "demo", "sisa", "vbu", "distruction", "unlearnable", "list"),
]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _listed_commands(help_text: str) -> list[str]:
    """The command names of the help's listing: the lines indented by 4 under ``COMMAND`` (help on the same line or,
    for a long name, the next one, indented further)."""
    listing = help_text.split("  COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    return [line.split()[0] for line in listing.splitlines() if line.startswith("    ") and line[4] != " "]


def test_help_lists_every_subcommand(capsys):
    parser = build_parser()
    commands = _subcommands(parser)
    assert list(commands) == COMMANDS
    assert list(_subcommands(commands["sisa"])) == ["train", "forget", "evaluate"]
    assert list(_subcommands(commands["distruction"])) == ["prepare"]
    assert list(_subcommands(commands["unlearnable"])) == ["make", "study"]
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert _listed_commands(out) == COMMANDS
    assert "--debug" in out and "--version" in out
    code, out, _ = run_main(capsys, "sisa", "--help")
    assert code == 0 and _listed_commands(out.replace("SISA_COMMAND", "COMMAND")) == ["train", "forget", "evaluate"]
    code, out, _ = run_main(capsys, "unlearn", "--help")
    assert code == 0 and "--method" in out and "--overwrite" in out and "--set" in out


def test_every_subcommand_has_a_handler_and_its_help_works(capsys):
    for name, parser in _subcommands(build_parser()).items():
        nested = _subcommands(parser) if name in ("sisa", "distruction", "unlearnable") else {name: parser}
        for sub in nested.values():
            assert callable(sub.get_default("func")), sub.prog
            assert run_main(capsys, *sub.prog.split()[1:], "--help")[0] == 0, sub.prog


def test_help_loads_no_library_code():
    """--help builds every parser without torch, sklearn, diffusers or any library module (the handlers import it)."""
    code = (
        "import contextlib, io, sys\n"
        "from pipelines.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['--help']) == 0 and main(['sisa', 'train', '--help']) == 0\n"
        "heavy = ('torch', 'sklearn', 'diffusers', 'transformers', 'classifiers', 'concept_erase.core')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_sisa_help_names_the_library_strategies_and_aggregations():
    from classifiers.sisa import AGGREGATIONS, STRATEGIES
    from pipelines.cli import sisa

    assert sisa.STRATEGIES == tuple(STRATEGIES) and sisa.AGGREGATIONS == tuple(AGGREGATIONS)


def test_unknown_subcommand_is_one_line_and_status_2():
    result = cli("frobnicate")
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "invalid choice: 'frobnicate'", "unlearn")


def test_list_shows_methods_steps_and_bundled_pipelines(capsys):
    code, out, _ = run_main(capsys, "list")
    assert code == 0
    for name in ("finetune", "[classifier]", "train_classifier", "saliency_mask", "report", "quickstart"):
        assert name in out


# ---------------------------------------------------------------------------------------------------- unlearn + evaluate


def test_unlearn_end_to_end_then_evaluate_the_output(tmp_path, capsys):
    out = tmp_path / "ft"
    code, stdout, err = run_main(
        capsys, "unlearn", "--method", "finetune", "--set", "epochs=3", "--output_dir", out, "--seed", "1",
        "--forget_classes", "3", "--model", "mlp", "--recipe", "epochs=8",
    )  # fmt: skip
    assert code == 0, err
    assert "UA" in stdout and "(oracle 100.00)" in stdout and str(out) in stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "model_config.json",
        "metrics.json",
        "run.json",
        "config.yaml",
        "unlearn.json",
    } <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["oracle"]["ua"] == 100.0  # the oracle never saw a 3
    assert metrics["ua"] > metrics["original"]["ua"]
    assert metrics["ta_remaining"] > 85
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["method_config"]["epochs"] == 3 and run["config"]["seed"] == 1 and run["seed"] == 1
    assert isinstance(load_model(out), torch.nn.Module)

    evaluated = tmp_path / "eval"
    code, stdout, err = run_main(capsys, "evaluate", "--model", out, "--output_dir", evaluated)
    assert code == 0, err
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["forget_classes"] == [3]  # read from the directory's unlearn.json
    assert 100 * (1 - again["forget_accuracy"]) == pytest.approx(metrics["ua"])
    assert 100 * again["retain_accuracy"] == pytest.approx(metrics["ra"])
    assert 100 * again["test_accuracy"] == pytest.approx(metrics["ta_remaining"])
    assert (evaluated / "per_class_accuracy.png").stat().st_size > 1000

    # an existing output is refused, then replaced with --overwrite
    code, _, err = run_main(capsys, "evaluate", "--model", out, "--output_dir", evaluated, "--forget_classes", "5")
    assert code == 2
    assert_one_line_error(err, "exists and is not empty", "--overwrite")
    assert json.loads((evaluated / "metrics.json").read_text())["forget_classes"] == [3]
    code, _, _ = run_main(
        capsys, "evaluate", "--model", out, "--output_dir", evaluated, "--forget_classes", "5", "--overwrite"
    )
    assert code == 0 and json.loads((evaluated / "metrics.json").read_text())["forget_classes"] == [5]


def test_unlearn_a_given_model_dir_leaves_the_input_untouched(tmp_path, capsys, model_dir):
    before = (model_dir / "model.safetensors").read_bytes()
    out = tmp_path / "out"
    code, _, err = run_main(
        capsys,
        "unlearn",
        "--method",
        "finetune",
        "--model",
        model_dir,
        "--set",
        "max_train_steps=2",
        "--no_oracle",
        "--output_dir",
        out,
    )
    assert code == 0, err
    assert (model_dir / "model.safetensors").read_bytes() == before
    assert (out / "model.safetensors").read_bytes() != before
    assert json.loads((out / "metrics.json").read_text())["oracle"] is None  # --no_oracle


# ---------------------------------------------------------------------------------------------------- bad inputs


def _bad_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: [1, 2\nlearning_rate: 0.1\n")
    return path


def _bad_mask(tmp_path: Path) -> Path:
    """A valid mask file for a different model (a 3x3 layer where the MLP has 64x64)."""
    from concept_erase.core.saliency import SaliencyMask

    path = tmp_path / "other_model_mask.safetensors"
    SaliencyMask.from_scores({"net.1.weight": torch.rand(3, 3)}, ratio=0.5).save(path)
    return path


def _ratio_pipeline(tmp_path: Path) -> Path:
    path = tmp_path / "ratio.yaml"
    steps = [
        {"name": "train", "step": "train_classifier", "config": {"epochs": 1}},
        {"name": "mask", "step": "saliency_mask", "config": {"model_dir": "${steps.train.model_dir}", "ratio": 1.5}},
    ]
    path.write_text(yaml.safe_dump({"name": "ratio", "steps": steps}))
    return path


@pytest.mark.parametrize(
    "make_args, fragments",
    [
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--model", m, "--set", f"mask_path={_bad_mask(d)}"],
            ["mask for 'net.1.weight' has shape (3, 3) but the model parameter has shape"],
        ),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--model", m, "--forget_classes", *map(str, range(10))],
            ["nothing would be retained"],
        ),
        (lambda d, m: ["run", _ratio_pipeline(d)], ["ratio must be in (0, 1], got 1.5"]),
        (
            lambda d, m: ["unlearn", "--method", "nope"],
            [
                "unknown classifier method 'nope'",
                "registered classifier methods: amnesiac, amnesiac_relabel, bad_teacher, boundary_expand,",
            ],
        ),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--config", _bad_yaml(d)],
            ["bad.yaml is not valid YAML at line"],
        ),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--set", "epoch=3"],
            ["unknown key 'epoch' for FinetuneConfig", "valid keys: batch_size, checkpointing_steps, epochs,"],
        ),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--set", "epochs=many"],
            ["epochs: expected int, got str 'many'"],
        ),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--set", "optimizer=lion"],
            ["accepted values: 'sgd', 'adam', 'adamw'"],
        ),
        (lambda d, m: ["unlearn", "--method", "finetune", "--model", d / "missing"], ["model directory not found"]),
        (
            lambda d, m: ["unlearn", "--method", "finetune", "--forget_classes", "12", "--model", m],
            ["unknown class [12] for dataset 'digits': its classes are 0..9"],
        ),
        (lambda d, m: ["unlearn", "--method", "finetune", "--seed", "x"], ["argument --seed: invalid int value: 'x'"]),
        (lambda d, m: ["unlearn"], ["the following arguments are required: --method"]),
        (lambda d, m: ["evaluate", "--model", d / "missing"], ["model directory not found", "missing"]),
        (lambda d, m: ["evaluate", "--model", d], ["is not a classifier model directory"]),
        (
            lambda d, m: ["erase", "--method", "esdx", "--concept", "cat", "--model", "x/y"],
            ["unknown diffusion method 'esdx'", "registered diffusion methods: esd, fmn, rece, salun, uce"],
        ),
        (
            lambda d, m: ["erase", "--method", "finetune", "--concept", "cat", "--model", "x/y"],
            ["classifier methods run with `concept-erase unlearn`"],
        ),
        (lambda d, m: ["run", "no_such_pipeline"], ["pipeline config not found: 'no_such_pipeline'"]),
        (lambda d, m: ["run", _bad_yaml(d)], ["bad.yaml is not valid YAML"]),
    ],
)
def test_bad_input_fails_with_one_line_status_2_and_writes_nothing(tmp_path, capsys, model_dir, make_args, fragments):
    out = tmp_path / "out"
    args = [*make_args(tmp_path, model_dir)]
    if args[0] != "run" and args != ["unlearn"]:
        args += ["--output_dir", out]
    elif args[0] == "run":
        args += ["--output_dir", out]
    code, stdout, err = run_main(capsys, *args)
    assert code == 2
    assert_one_line_error(err, *fragments)
    assert_nothing_written(out)


def test_existing_output_is_refused_without_overwrite(tmp_path, capsys, model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_main(capsys, "unlearn", "--method", "finetune", "--model", model_dir, "--output_dir", out)
    assert code == 2
    assert_one_line_error(err, f"output directory {out} exists and is not empty; pass --overwrite")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]


def test_debug_prints_the_traceback(tmp_path, capsys):
    code, _, err = run_main(capsys, "--debug", "unlearn", "--method", "nope", "--output_dir", tmp_path / "o")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("concept-erase: error:")


@pytest.fixture
def exploding_method():
    @register_method("explodes_in_test", None, tags=("classifier",))
    def explodes(model, task, config, *, work_dir=None):
        return 1 / 0

    yield "explodes_in_test"
    METHODS.unregister("explodes_in_test")


def test_unexpected_exception_is_one_line_status_1_traceback_with_debug(tmp_path, capsys, model_dir, exploding_method):
    out = tmp_path / "out"
    args = ["unlearn", "--method", exploding_method, "--model", model_dir, "--output_dir", out]
    code, _, err = run_main(capsys, *args)
    assert code == 1
    assert_one_line_error(err, "internal error: ZeroDivisionError", "--debug")
    assert_nothing_written(out)
    code, _, err = run_main(capsys, "--debug", *args)
    assert code == 1 and "Traceback" in err and "1 / 0" in err
    assert_nothing_written(out)
