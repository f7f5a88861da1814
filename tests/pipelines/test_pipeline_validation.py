"""The whole pipeline is checked before anything runs: references against the keys each step declares, the output
directory against every input path; temporaries left by a killed run are removed on the next run."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from concept_erase.core.errors import OutputOverlapsInputError, PipelineError
from concept_erase.core.registry import STEPS, register_step
from pipelines.cli import main
from pipelines.runner import load_pipeline


@dataclass
class EchoConfig:
    value: str = ""
    model_dir: str = ""


@pytest.fixture(scope="module", autouse=True)
def echo_step():
    @register_step("echo_in_validation_test", EchoConfig, outputs=("value", "path"))
    def echo(context, config: EchoConfig) -> dict:
        (context.step_dir / "value.txt").write_text(config.value)
        return {"value": config.value, "path": str(context.step_dir / "value.txt")}

    yield
    STEPS.unregister("echo_in_validation_test")


def _write(path: Path, pipeline: dict) -> Path:
    path.write_text(yaml.safe_dump(pipeline))
    return path


def _three_steps(bad_ref: str) -> dict:
    return {
        "name": "refs",
        "steps": [
            {"name": "train", "step": "train_classifier", "config": {"epochs": 1}},
            {"name": "evaluate", "step": "evaluate_classifier", "config": {"model_dir": "${steps.train.model_dir}"}},
            {"name": "mask", "step": "saliency_mask", "config": {"model_dir": bad_ref}},
        ],
    }


@pytest.mark.parametrize("bad_ref", ["${steps.train.mask_path}", "prefix/${steps.train.nope}/suffix"])
def test_a_reference_to_a_key_the_step_does_not_declare_fails_before_any_step_runs(tmp_path, capsys, bad_ref):
    config = _write(tmp_path / "p.yaml", _three_steps(bad_ref))
    out = tmp_path / "out"
    assert main(["run", str(config), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    key = "mask_path" if "mask_path" in bad_ref else "nope"
    assert "steps[2] 'mask'" in err[0] and f"${{steps.train.{key}}}" in err[0]
    assert "step 'train' (train_classifier) has no output" in err[0] and "model_dir, test_accuracy" in err[0]
    assert not out.exists()  # no step folder, no manifest


def test_the_static_check_names_the_declared_outputs_and_accepts_declared_ones(tmp_path):
    with pytest.raises(
        PipelineError, match=r"step 'a' \(echo_in_validation_test\) has no output 'x'; its outputs: value, path"
    ):
        load_pipeline(
            {
                "name": "p",
                "steps": [
                    {"name": "a", "step": "echo_in_validation_test", "config": {"value": "1"}},
                    {"name": "b", "step": "echo_in_validation_test", "config": {"value": "${steps.a.x}"}},
                ],
            }
        )
    manifest = load_pipeline(
        {
            "name": "p",
            "steps": [
                {"name": "a", "step": "echo_in_validation_test", "config": {"value": "1"}},
                {"name": "b", "step": "echo_in_validation_test", "config": {"value": "got ${steps.a.value}"}},
            ],
        }
    ).run(tmp_path / "out", log=lambda _: None)
    assert manifest["steps"]["b"]["outputs"]["value"] == "got 1"


def _echo(name: str = "echo", **config) -> dict:
    return {"name": name, "steps": [{"name": "a", "step": "echo_in_validation_test", "config": config}]}


@pytest.mark.parametrize("where", ["same", "inside", "contains"])
def test_an_output_overlapping_an_input_path_is_refused_before_anything_is_written(tmp_path, where):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"keep me")
    out = {"same": model, "inside": model / "out", "contains": tmp_path}[where]
    with pytest.raises(OutputOverlapsInputError, match=f"the input {model}"):
        load_pipeline(_echo(model_dir=str(model))).run(out, overwrite=True, log=lambda _: None)
    assert (model / "weights.bin").read_bytes() == b"keep me" and not (model / "out").exists()
    assert not (tmp_path / "manifest.json").exists() and not (model / "manifest.json").exists()


def test_an_output_containing_the_pipeline_file_is_refused_even_with_overwrite(tmp_path, capsys):
    (tmp_path / "work").mkdir()
    config = _write(tmp_path / "work" / "p.yaml", _echo())
    assert main(["run", str(config), "--output_dir", str(tmp_path / "work"), "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "contains the input" in err[0] and "p.yaml" in err[0]
    assert config.is_file() and sorted(p.name for p in (tmp_path / "work").iterdir()) == ["p.yaml"]


def test_references_and_empty_values_are_not_inputs(tmp_path, monkeypatch):
    # model_dir "" (a default) and references into the output directory itself are not input paths
    pipeline = {
        "name": "p",
        "steps": [
            {"name": "a", "step": "echo_in_validation_test", "config": {"value": "1"}},
            {"name": "b", "step": "echo_in_validation_test", "config": {"model_dir": "${steps.a.path}"}},
        ],
    }
    monkeypatch.chdir(tmp_path)
    manifest = load_pipeline(pipeline).run("out", log=lambda _: None)
    assert manifest["status"] == "completed"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_left_by_a_killed_run_are_removed_on_the_next_run(tmp_path):
    out = tmp_path / "out"
    pipeline = _echo(value="1")
    load_pipeline(pipeline).run(out, log=lambda _: None)
    dead, live = _dead_pid(), os.getppid()
    stale_dir = out / "steps" / f".a.tmp-{dead}-0123abcd"
    stale_dir.mkdir()
    (stale_dir / "half.bin").write_bytes(b"x")
    stale_file = out / f".manifest.json.tmp-{dead}-89abcdef"
    stale_file.write_text("{")
    alive = out / "steps" / f".a.tmp-{live}-fedcba98"  # another live process's temporary: kept
    alive.mkdir()
    unrelated = out / "steps" / ".a.tmp-notes"
    unrelated.mkdir()
    logs: list[str] = []
    manifest = load_pipeline(pipeline).run(out, log=logs.append)
    assert manifest["status"] == "completed" and manifest["last_run"]["skipped"] == ["a"]
    assert not stale_dir.exists() and not stale_file.exists()
    assert alive.is_dir() and unrelated.is_dir()
    assert sum("a temporary left by a run that was killed" in line for line in logs) == 2


def test_a_temporary_of_a_run_killed_with_kill_9_is_removed(tmp_path):
    out = tmp_path / "out"
    config = _write(tmp_path / "p.yaml", _echo(value="1"))
    load_pipeline(config).run(out, log=lambda _: None)
    script = (
        "import os, signal, sys\n"
        "from concept_erase.core.io import atomic_output_dir\n"
        f"with atomic_output_dir({str(out / 'steps' / 'a')!r}, overwrite=True) as tmp:\n"
        "    (tmp / 'partial').write_text('x')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", script], check=False)
    leftovers = [p for p in (out / "steps").iterdir() if p.name.startswith(".a.tmp-")]
    assert len(leftovers) == 1
    load_pipeline(config).run(out, log=lambda _: None)
    assert not leftovers[0].exists()


@pytest.mark.parametrize(
    "content, what",
    [
        (b"", "the file is empty"),
        (b'{"pipeline": "echo", "steps": {', "not valid JSON"),
        (b"\x80\x81\xfe\xff", "not UTF-8 text"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'{"steps": {}}', "'pipeline' is missing"),
        (b'{"pipeline": "echo", "runs": "two"}', "'runs' must be a non-negative integer"),
        (b'{"pipeline": "echo", "steps": []}', "'steps' must be an object"),
        (b'{"pipeline": "echo", "steps": {"a": 3}}', "steps.a must be an object"),
        (b'{"pipeline": "echo", "steps": {"a": {"runs": -1}}}', "steps.a.runs must be a non-negative integer"),
        (b'{"pipeline": "echo", "steps": {"a": {"outputs": [1]}}}', "steps.a.outputs must be an object"),
    ],
)
def test_a_corrupt_manifest_is_refused_in_one_line_naming_it(tmp_path, capsys, content, what):
    out = tmp_path / "out"
    config = _write(tmp_path / "p.yaml", _echo(value="1"))
    load_pipeline(config).run(out, log=lambda _: None)
    (out / "manifest.json").write_bytes(content)
    assert main(["run", str(config), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out / 'manifest.json'} is corrupt" in err[0] and what in err[0], err
    assert (out / "manifest.json").read_bytes() == content


def test_every_bundled_step_type_declares_its_outputs():
    for entry in STEPS:
        if entry.name.endswith("_test"):
            continue
        assert entry.outputs, f"step {entry.name!r} declares no outputs (register_step(..., outputs=(...)))"


def test_classifier_steps_return_only_the_keys_they_declare(tmp_path):
    pipeline = {
        "name": "declared",
        "steps": [
            {"name": "train", "step": "train_classifier", "config": {"epochs": 1, "model": {"name": "mlp"}}},
            {"name": "mask", "step": "saliency_mask", "config": {"model_dir": "${steps.train.model_dir}"}},
            {
                "name": "unlearn",
                "step": "unlearn",
                "config": {
                    "model_dir": "${steps.train.model_dir}",
                    "method_config": {"epochs": 1, "mask": "saliency", "mask_path": "${steps.mask.mask_path}"},
                },
            },
            {"name": "eval", "step": "evaluate_classifier", "config": {"model_dir": "${steps.unlearn.model_dir}"}},
            {"name": "report", "step": "report", "config": {}},
        ],
    }
    manifest = load_pipeline(pipeline).run(tmp_path / "out", log=lambda _: None)
    for step_id, record in manifest["steps"].items():
        declared = set(STEPS.get(record["step"]).outputs)
        assert set(record["outputs"]) <= declared, (step_id, set(record["outputs"]) - declared)


@pytest.mark.parametrize(
    "override",
    [
        "steps.mask.batch_size=0",
        "steps.mask.ratio=nan",
        "steps.mask.ratio=1.5",
        "steps.mask.data_seed=-1",
        "steps.unlearn.test_size=inf",
        "steps.eval_unlearned.batch_size=-3",
        "steps.train.learning_rate=-inf",
    ],
)
def test_a_bad_number_in_any_step_config_is_refused_before_any_step_runs(tmp_path, capsys, override):
    out = tmp_path / "qs"
    assert main(["run", "quickstart", "--output_dir", str(out), "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    step, key = override.split("=")[0].split(".")[1:]
    assert len(err.splitlines()) == 1 and f"'{step}'" in err and key in err, err
    assert "no step named" not in err
    assert not out.exists()
