"""The pipeline runner: validation before running, outputs, resuming, failures, work directories, quickstart."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import pytest
import torch
import yaml

from concept_erase.core.errors import (
    ConfigError,
    OutputExistsError,
    PipelineError,
    UnknownConfigKeyError,
    UnknownNameError,
)
from concept_erase.core.registry import STEPS, register_step
from pipelines.cli import main
from pipelines.runner import load_pipeline


def mini(**unlearn_config: Any) -> dict:
    """A fast pipeline: train -> unlearn -> evaluate -> report (about a second)."""
    return {
        "name": "mini",
        "seed": 3,
        "steps": [
            {"name": "train", "step": "train_classifier", "config": {"max_train_steps": 40}},
            {
                "name": "unlearn",
                "step": "unlearn",
                "config": {
                    "model_dir": "${steps.train.model_dir}",
                    "method_config": {"max_train_steps": 5, **unlearn_config},
                },
            },
            {"name": "evaluate", "step": "evaluate_classifier", "config": {"model_dir": "${steps.unlearn.model_dir}"}},
            {"name": "report", "step": "report", "config": {}},
        ],
    }


def run(source, out: Path, overrides=None, **kwargs) -> dict:
    return load_pipeline(source, overrides).run(out, log=lambda line: None, **kwargs)


def manifest_of(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@dataclass
class ProbeConfig:
    value: Any = None
    fail_until: int = 0  # fail while the attempt counter kept in the work directory is below this
    tag: str = ""
    seed: int = 0


@pytest.fixture(scope="module", autouse=True)
def probe_step():
    """A step that echoes its config, counts attempts in its work directory and can fail on purpose."""

    @register_step("probe_in_test", ProbeConfig)
    def probe(context, config: ProbeConfig) -> dict:
        counter = context.work_dir() / "attempts.txt"
        attempts = int(counter.read_text()) + 1 if counter.exists() else 1
        counter.write_text(str(attempts))
        (context.step_dir / "file.txt").write_text(str(config.value))
        if attempts < config.fail_until:
            raise RuntimeError(f"attempt {attempts} failed on purpose")
        return {"value": config.value, "attempts": attempts, "path": context.step_dir / "file.txt", "seed": config.seed}

    yield
    STEPS.unregister("probe_in_test")


def probe_pipeline(*configs: dict, name: str = "probes") -> dict:
    return {
        "name": name,
        "steps": [{"name": f"p{i}", "step": "probe_in_test", "config": c} for i, c in enumerate(configs)],
    }


# ---------------------------------------------------------------------------------------------------- quickstart


def test_quickstart_runs_end_to_end_and_a_rerun_skips_every_step(tmp_path, capsys):
    out = tmp_path / "qs"
    assert main(["run", "quickstart", "--output_dir", str(out)]) == 0
    stdout = capsys.readouterr().out
    manifest = manifest_of(out)
    steps = ["train", "retrain", "mask", "unlearn", "eval_original", "eval_unlearned", "eval_retrain", "report"]
    assert list(manifest["steps"]) == steps and manifest["status"] == "completed"
    for step_id, record in manifest["steps"].items():
        assert record["status"] == "completed" and record["runs"] == 1 and record["wall_time_s"] > 0
        assert {"run.json", "config.yaml"} <= {p.name for p in (out / "steps" / step_id).iterdir()}
        assert json.loads((out / "steps" / step_id / "run.json").read_text())["outputs"] == record["outputs"]
    assert yaml.safe_load((out / "pipeline.yaml").read_text())["steps"][3]["config"]["method_config"]["mask_path"] == (
        "${steps.mask.mask_path}"
    )
    assert not (out / ".work").exists()

    # the mask froze half of the weights: they are bit-identical to the original model's
    from classifiers.models import load_model

    original, unlearned = load_model(out / "steps/train"), load_model(out / "steps/unlearn")
    assert 0.4 < manifest["steps"]["mask"]["outputs"]["fraction_kept"] < 0.6
    mask = _load_mask(out / "steps/mask/mask.safetensors", original)
    for name, p in original.named_parameters():
        frozen = ~mask[name]
        assert torch.equal(p[frozen], dict(unlearned.named_parameters())[name][frozen])
    assert not torch.equal(original.net[1].weight, unlearned.net[1].weight)

    report = json.loads((out / "steps/report/report.json").read_text())
    rows = {row["step"]: row for row in report["rows"]}
    assert rows["eval_retrain"]["forget_accuracy"] == 0.0
    assert rows["eval_unlearned"]["forget_accuracy"] < rows["eval_original"]["forget_accuracy"]
    assert "| eval_unlearned |" in stdout and "avg gap to eval_retrain" in stdout
    assert (out / "steps/report/per_class_accuracy.png").read_bytes()[:4] == b"\x89PNG"

    # a second run skips everything and changes no step record
    assert main(["run", "quickstart", "--output_dir", str(out)]) == 0
    assert "0 step(s) ran, 8 skipped" in capsys.readouterr().out
    again = manifest_of(out)
    assert again["steps"] == manifest["steps"] and again["runs"] == 2 and again["last_run"]["skipped"] == steps


def _load_mask(path: Path, model) -> dict[str, torch.Tensor]:
    from concept_erase.core.saliency import SaliencyMask

    mask = SaliencyMask.load(path, model)
    return {name: m.bool() for name, m in mask.masks.items()}


# ---------------------------------------------------------------------------------------------------- resuming


def test_changed_step_config_reruns_that_step_and_everything_after_it(tmp_path):
    out = tmp_path / "mini"
    first = run(mini(), out)
    model_before = (out / "steps/unlearn/model.safetensors").read_bytes()
    second = run(mini(), out, ["steps.unlearn.method_config.max_train_steps=8"])
    assert second["last_run"] == {"ran": ["unlearn", "evaluate", "report"], "skipped": ["train"]}
    assert second["steps"]["train"] == first["steps"]["train"]
    for step_id in ("unlearn", "evaluate", "report"):
        assert second["steps"][step_id]["runs"] == 2
        assert second["steps"][step_id]["started"] > first["steps"][step_id]["finished"]
    assert second["steps"]["unlearn"]["config"]["method_config"]["max_train_steps"] == 8
    assert (out / "steps/unlearn/model.safetensors").read_bytes() != model_before
    # the pipeline seed reaches every step config that has a seed, and the method config through the unlearn step
    assert (
        second["steps"]["train"]["config"]["seed"] == 3
        and second["steps"]["unlearn"]["config"]["method_config"]["seed"] == 3
    )


def test_seeded_pipeline_is_deterministic(tmp_path):
    a, b = run(mini(), tmp_path / "a"), run(mini(), tmp_path / "b")
    metrics = [{k: v for k, v in m["steps"]["evaluate"]["outputs"].items() if k != "metrics_path"} for m in (a, b)]
    assert metrics[0] == metrics[1] and metrics[0]["retain_accuracy"] > 0.5
    weights = [(tmp_path / d / "steps/unlearn/model.safetensors").read_bytes() for d in "ab"]
    assert weights[0] == weights[1]


def test_failing_step_keeps_completed_steps_records_the_failure_and_resumes(tmp_path, capsys):
    config = tmp_path / "p.yaml"
    pipeline = mini()
    pipeline["steps"][2]["config"]["model_dir"] = "${steps.unlearn.model_dir}/missing"
    config.write_text(yaml.safe_dump(pipeline))
    out = tmp_path / "out"
    assert main(["run", str(config), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "step 'evaluate' (evaluate_classifier) failed: model directory not found" in err
    manifest = manifest_of(out)
    assert manifest["status"] == "failed"
    assert [manifest["steps"][s]["status"] for s in ("train", "unlearn", "evaluate", "report")] == [
        "completed",
        "completed",
        "failed",
        "pending",
    ]
    assert "model directory not found" in manifest["steps"]["evaluate"]["error"]
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["train", "unlearn"]  # no half-written step
    assert (out / "steps/unlearn/model.safetensors").is_file()

    config.write_text(yaml.safe_dump(mini()))
    assert main(["run", str(config), "--output_dir", str(out)]) == 0
    fixed = manifest_of(out)
    assert fixed["last_run"] == {"ran": ["evaluate", "report"], "skipped": ["train", "unlearn"]}
    assert fixed["steps"]["unlearn"] == manifest["steps"]["unlearn"]
    assert fixed["steps"]["evaluate"]["status"] == "completed" and fixed["steps"]["evaluate"]["error"] is None


def test_work_dir_survives_a_failure_and_is_reset_by_a_config_change(tmp_path):
    out = tmp_path / "out"
    pipeline = probe_pipeline({"value": 1}, {"value": 2, "fail_until": 3})
    for attempt in (1, 2):
        with pytest.raises(
            PipelineError, match=f"step 'p1' \\(probe_in_test\\) failed: RuntimeError: attempt {attempt}"
        ):
            run(pipeline, out)
        assert (out / ".work/p1/attempts.txt").read_text() == str(attempt)
        assert not (out / "steps/p1").exists()
    manifest = run(pipeline, out)
    assert manifest["steps"]["p1"]["outputs"]["attempts"] == 3 and manifest["steps"]["p1"]["runs"] == 3
    assert manifest["steps"]["p0"]["runs"] == 1
    assert not (out / ".work").exists()  # cleaned after success

    with pytest.raises(PipelineError):
        run(probe_pipeline({"value": 1}, {"value": 2, "fail_until": 3, "tag": "changed"}), out)
    assert (out / ".work/p1/attempts.txt").read_text() == "1"  # a new config starts from a clean work dir


def test_references_keep_types_and_output_paths_point_into_the_final_step_dir(tmp_path):
    out = tmp_path / "out"
    manifest = run(
        probe_pipeline(
            {"value": [1, 2]},
            {"value": {"whole": "${steps.p0.value}", "text": "seen ${steps.p0.attempts} time(s)"}},
        ),
        out,
    )
    assert manifest["steps"]["p1"]["outputs"]["value"] == {"whole": [1, 2], "text": "seen 1 time(s)"}
    path = Path(manifest["steps"]["p0"]["outputs"]["path"])
    assert path == out.absolute() / "steps/p0/file.txt" and path.read_text() == "[1, 2]"
    assert manifest["steps"]["p0"]["outputs"]["seed"] == 0  # the pipeline's default seed


def test_reference_to_a_missing_output_fails_the_step_naming_the_outputs(tmp_path):
    with pytest.raises(
        PipelineError, match=r"step 'p0' has no output 'nope'; its outputs: value, attempts, path, seed"
    ):
        run(probe_pipeline({"value": 1}, {"value": "${steps.p0.nope}"}), tmp_path / "out")
    assert manifest_of(tmp_path / "out")["steps"]["p1"]["status"] == "failed"


# ---------------------------------------------------------------------------------------------------- validation


def _steps(*specs):
    return {"name": "bad", "steps": [{"name": n, "step": s, "config": c} for n, s, c in specs]}


@pytest.mark.parametrize(
    "pipeline, error, pattern",
    [
        (
            _steps(("a", "probe_in_test", {}), ("b", "nope", {})),
            UnknownNameError,
            r"steps\[1\] 'b': unknown step 'nope'; registered steps: .*train_classifier",
        ),
        (_steps(("a", "probe_in_test", {}), ("a", "probe_in_test", {})), PipelineError, "duplicate step name"),
        (_steps(("a/b", "probe_in_test", {})), PipelineError, "a step name must be"),
        (
            _steps(("a", "probe_in_test", {}), ("t", "train_classifier", {"epoch": 3})),
            UnknownConfigKeyError,
            r"steps\[1\] 't' \(train_classifier\): unknown key 'epoch' for TrainConfig; valid keys: .*epochs",
        ),
        (
            _steps(("t", "train_classifier", {"model": {"name": "resnet"}})),
            ConfigError,
            "unknown model 'resnet'; accepted models: cnn, mlp, vit",
        ),
        (_steps(("t", "train_classifier", {"epochs": "ten"})), ConfigError, "epochs: expected int"),
        (_steps(("u", "unlearn", {"method": "nope"})), UnknownNameError, "unknown classifier method 'nope'"),
        (
            _steps(("u", "unlearn", {"method_config": {"epochz": 1}})),
            UnknownConfigKeyError,
            "unknown key 'epochz' for FinetuneConfig",
        ),
        (
            _steps(("a", "probe_in_test", {"value": "${steps.b.x}"}), ("b", "probe_in_test", {})),
            PipelineError,
            "must refer to an earlier step",
        ),
        ({"name": "empty", "steps": []}, PipelineError, "has no steps"),
        ({"name": "x", "stepz": []}, UnknownConfigKeyError, "unknown key 'stepz' for PipelineConfig"),
    ],
)
def test_invalid_pipelines_are_rejected_before_anything_runs(tmp_path, pipeline, error, pattern):
    with pytest.raises(error, match=pattern):
        load_pipeline(pipeline).run(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overrides_must_name_an_existing_step():
    with pytest.raises(ConfigError, match="no step named 'nope'; steps: p0"):
        load_pipeline(probe_pipeline({}), ["steps.nope.value=1"])
    assert load_pipeline(probe_pipeline({}), ["steps.p0.value=5", "seed=9"]).steps[0].raw == {"value": 5, "seed": 9}


def test_output_dir_of_something_else_is_refused_and_overwrite_starts_again(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "unrelated.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="not empty; pass --overwrite"):
        run(probe_pipeline({}), out)
    run(probe_pipeline({}), out, overwrite=True)
    assert not (out / "unrelated.txt").exists() and (out / "steps/p0").is_dir()
    with pytest.raises(OutputExistsError, match="holds pipeline 'probes', not 'other'"):
        run(probe_pipeline({}, name="other"), out)
    manifest = run(probe_pipeline({}), out, overwrite=True)
    assert manifest["runs"] == 1 and manifest["steps"]["p0"]["outputs"]["attempts"] == 1


def test_missing_output_dir_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no output directory"):
        load_pipeline(probe_pipeline({})).run()


# ---------------------------------------------------------------------------------------------------- kill -9 and resume


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _start_and_kill_after_first_checkpoint(config: Path, out: Path) -> None:
    """Start ``concept-erase run`` and kill -9 it as soon as its training step has written a checkpoint."""
    proc = subprocess.Popen(_cli("run", str(config), "--output_dir", str(out)), stdout=DEVNULL, stderr=DEVNULL)
    work = out / ".work" / "train"
    deadline = time.monotonic() + 120
    while not (work.is_dir() and any(p.name.startswith("checkpoint-") for p in work.iterdir())):
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (out / "steps" / "train").exists()  # the step never completed


@pytest.fixture()
def long_training(tmp_path) -> Path:
    config = tmp_path / "long.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "long",
                "steps": [
                    {
                        "name": "train",
                        "step": "train_classifier",
                        "config": {"max_train_steps": 300, "checkpointing_steps": 20},
                    }
                ],
            }
        )
    )
    return config


@pytest.mark.slow
def test_killed_pipeline_resumes_from_its_checkpoint_bit_identically(tmp_path, long_training):
    reference = tmp_path / "reference"
    subprocess.run(_cli("run", str(long_training), "--output_dir", str(reference)), check=True, capture_output=True)
    out = tmp_path / "out"
    _start_and_kill_after_first_checkpoint(long_training, out)
    proc = subprocess.run(_cli("run", str(long_training), "--output_dir", str(out)), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "steps/train/run.json").read_text())
    assert "checkpoint-" in json.dumps(record)  # it resumed instead of starting over
    model = "steps/train/model.safetensors"
    assert (out / model).read_bytes() == (reference / model).read_bytes()


@pytest.mark.slow
def test_corrupt_checkpoint_on_resume_fails_clearly(tmp_path, long_training):
    out = tmp_path / "out"
    _start_and_kill_after_first_checkpoint(long_training, out)
    for checkpoint in (out / ".work" / "train").glob("checkpoint-*"):
        (checkpoint / "model.safetensors").write_bytes(b"garbage")
    proc = subprocess.run(_cli("run", str(long_training), "--output_dir", str(out)), capture_output=True, text=True)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "corrupt" in lines[0] and "Traceback" not in proc.stderr, proc.stderr
    assert not (out / "steps" / "train").exists()
