"""Outputs never destroy inputs, and runs leave nothing behind.

- Every command refuses an output that is, contains or lies inside one of its inputs, with ``--overwrite`` or without:
  status 2, one line naming the problem, the input byte-for-byte intact. The check comes before any work: the inputs
  here are a copy of the embedded tiny Stable Diffusion (loading or training on it would take seconds) and fakes
  that would fail to load, so a case that got past the check would fail or be slow, not pass.
- A read-only output is refused before any work, naming the user's path (never a temporary sibling).
- Written files and directories get the modes the user's umask gives, not the ``0600`` / ``0700`` of tempfile-style
  writers (safetensors).
- Temporary siblings left by a run killed with SIGKILL are removed by the next run of the same output; those of a
  live run are kept.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from classifiers.models import build_model, save_model
from concept_erase.core.errors import ConceptEraseError, OutputOverlapsInputError
from concept_erase.core.io import (
    OutputNotWritableError,
    atomic_file,
    atomic_output_dir,
    check_output_dir,
    config_paths,
    remove_stale_temporaries,
)
from concept_erase.diffusion.tiny_sd import ASSETS, DEFAULT_MODEL
from pipelines.cli import CONFIGS_DIR, main

# ---------------------------------------------------------------------------------------------------- helpers


def tree_hash(path: Path) -> str:
    """A digest of everything under ``path`` (names, modes, contents; a file hashes itself)."""
    digest = hashlib.sha256()
    paths = [path] if path.is_file() else sorted(path.rglob("*"))
    for p in paths:
        digest.update(str(p.relative_to(path.parent)).encode())
        digest.update(oct(p.stat().st_mode).encode())
        if p.is_file():
            digest.update(p.read_bytes())
    return digest.hexdigest()


def run_main(capsys, argv: list) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("concept-erase: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------------------------------- inputs


@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """One of each kind of input, each alone in its own folder (so "contains" is that folder)."""
    root = tmp_path_factory.mktemp("inputs")

    def place(name: str) -> Path:
        (root / name).mkdir()
        return root / name

    torch.manual_seed(0)
    made = {"model": save_model(build_model("mlp", 10, (1, 8, 8)), place("model") / "model")}
    made["weights"] = place("weights") / "weights.safetensors"
    shutil.copy(made["model"] / "model.safetensors", made["weights"])
    made["method_yaml"] = place("method_yaml") / "method.yaml"
    made["method_yaml"].write_text("epochs: 1\n")
    made["bench_yaml"] = place("bench_yaml") / "bench.yaml"
    made["bench_yaml"].write_text("dataset: digits\nseeds: [0]\n")
    made["erase_yaml"] = place("erase_yaml") / "fmn.yaml"
    made["erase_yaml"].write_text("seed: 0\n")
    made["npz"] = place("npz") / "data.npz"
    np.savez(made["npz"], x=np.zeros((4, 8, 8), dtype=np.float32), y=np.array([0, 1, 0, 1]))
    made["indices"] = place("indices") / "forget.txt"
    made["indices"].write_text("1\n2\n3\n")
    made["mask"] = place("mask") / "mask.safetensors"
    save_file({"w": torch.ones(2)}, str(made["mask"]))
    # diffusion: a copy of the embedded tiny SD (expensive to load or train on) and of the judge
    made["pipeline"] = place("pipeline") / "tiny-sd"
    shutil.copytree(DEFAULT_MODEL, made["pipeline"])
    made["original"] = place("original") / "tiny-sd"
    shutil.copytree(DEFAULT_MODEL, made["original"])
    made["oracle"] = place("oracle") / "tiny-sd-without-seven"
    shutil.copytree(ASSETS / "tiny-sd-without-seven", made["oracle"])
    made["judge"] = place("judge") / "digit-judge"
    shutil.copytree(ASSETS / "digit-judge", made["judge"])
    made["adapter"] = place("adapter") / "adapter.safetensors"
    save_file({"w": torch.ones(2)}, str(made["adapter"]))
    made["base"] = place("base") / "tiny-sd"
    shutil.copytree(DEFAULT_MODEL, made["base"])
    made["erasure"] = place("erasure") / "fmn-seven"
    made["erasure"].mkdir()
    (made["erasure"] / "erasure.json").write_text(
        f'{{"method": "fmn", "concepts": ["seven"], "base_model": "{made["base"]}", "artifact": {{"format": "lora"}}}}\n'
    )
    made["pipeline_yaml"] = place("pipeline_yaml") / "pipeline.yaml"
    made["step_model"] = place("step_model") / "model"
    save_model(build_model("mlp", 10, (1, 8, 8)), made["step_model"])
    made["pipeline_yaml"].write_text(
        "name: guard\nsteps:\n"
        "  - name: eval\n    step: evaluate_classifier\n"
        f"    config: {{model_dir: {made['step_model']}}}\n"
    )
    return made


# command -> (the input it reads, argv with OUT for the output)
CASES = {
    "unlearn --model DIR": ("model", ["unlearn", "--method", "finetune", "--model", "{model}", "--no_oracle"]),
    "unlearn --weights": ("weights", ["unlearn", "--method", "finetune", "--model", "mlp", "--weights", "{weights}"]),
    "unlearn --config": ("method_yaml", ["unlearn", "--method", "finetune", "--config", "{method_yaml}"]),
    "unlearn --dataset": ("npz", ["unlearn", "--method", "finetune", "--dataset", "{npz}"]),
    "unlearn --forget indices:": ("indices", ["unlearn", "--method", "finetune", "--forget", "indices:{indices}"]),
    "unlearn --set mask_path=": ("mask", ["unlearn", "--method", "finetune", "--set", "mask_path={mask}"]),
    "bench --config": ("bench_yaml", ["bench", "classifiers", "--config", "{bench_yaml}"]),
    "bench --dataset": ("npz", ["bench", "classifiers", "--dataset", "{npz}"]),
    "bench --scenarios indices:": ("indices", ["bench", "classifiers", "--scenarios", "indices:{indices}"]),
    "bench --methods NAME:mask_path=": ("mask", ["bench", "classifiers", "--methods", "finetune:mask_path={mask}"]),
    "erase --model": ("pipeline", ["erase", "--method", "fmn", "--concept", "seven", "--model", "{pipeline}"]),
    "erase --config": ("erase_yaml", ["erase", "--method", "fmn", "--concept", "seven", "--config", "{erase_yaml}"]),
    "erase --set mask_path=": (
        "mask",
        ["erase", "--method", "salun", "--concept", "seven", "--set", "mask_path={mask}"],
    ),
    "evaluate --model (classifier)": ("model", ["evaluate", "--model", "{model}"]),
    "evaluate --dataset (classifier)": ("npz", ["evaluate", "--model", "{model}", "--dataset", "{npz}"]),
    "evaluate --model (diffusion)": ("pipeline", ["evaluate", "--model", "{pipeline}", "--forget", "seven"]),
    "evaluate --adapter": ("adapter", ["evaluate", "--model", "{pipeline}", "--adapter", "{adapter}"]),
    "evaluate --original": ("original", ["evaluate", "--model", "{pipeline}", "--original", "{original}"]),
    "evaluate --oracle DIR": (
        "oracle",
        ["evaluate", "--model", "{pipeline}", "--forget", "seven", "--oracle", "{oracle}"],
    ),
    "evaluate --judge": ("judge", ["evaluate", "--model", "{pipeline}", "--forget", "seven", "--judge", "{judge}"]),
    "evaluate --model ERASURE (its base)": ("base", ["evaluate", "--model", "{erasure}"]),
    "oracle --model": ("pipeline", ["oracle", "--concept", "seven", "--model", "{pipeline}"]),
    "oracle --judge": ("judge", ["oracle", "--concept", "seven", "--judge", "{judge}"]),
    "run CONFIG": ("pipeline_yaml", ["run", "{pipeline_yaml}"]),
    "run (a step's model_dir)": ("step_model", ["run", "{pipeline_yaml}"]),
    "vbu digits --forget indices:": ("indices", ["vbu", "digits", "--forget", "indices:{indices}"]),
    "distruction prepare --weights": (
        "weights",
        ["distruction", "prepare", "--model", "mlp", "--weights", "{weights}"],
    ),
    "distruction prepare --dataset": ("npz", ["distruction", "prepare", "--dataset", "{npz}"]),
}

RELATIONS = {
    "is": lambda source: source,
    "contains": lambda source: source.parent,
    "lies inside": lambda source: source / "out",
}


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("relation", list(RELATIONS))
@pytest.mark.parametrize("case", list(CASES))
def test_an_output_overlapping_an_input_is_refused_before_any_work(capsys, inputs, case, relation, overwrite):
    key, template = CASES[case]
    source = inputs[key]
    output = RELATIONS[relation](source)
    argv = [a.format(**{k: str(v) for k, v in inputs.items()}) for a in template]
    argv += ["--output_dir", str(output)] + (["--overwrite"] if overwrite else [])
    before = {k: tree_hash(p) for k, p in inputs.items()}
    siblings = sorted(p.name for p in source.parent.parent.iterdir())

    code, out, err = run_main(capsys, argv)

    line = one_line(err)
    assert code == 2, (code, out, err)
    assert f"{relation} the input" in line and "destroy" in line, line
    assert {k: tree_hash(p) for k, p in inputs.items()} == before  # every input intact, not only this one
    assert not (source / "out").exists()
    assert sorted(p.name for p in source.parent.parent.iterdir()) == siblings  # no temporary left beside them


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize(
    "argv",
    [
        ["erase", "--method", "fmn", "--concept", "seven"],  # the embedded model is the default input
        ["oracle", "--concept", "seven"],
        ["evaluate", "--model", "tiny-sd", "--forget", "seven"],  # a shipped asset name is an input path too
    ],
    ids=["erase", "oracle", "evaluate"],
)
def test_an_output_inside_the_embedded_model_is_refused(capsys, argv, overwrite):
    before = tree_hash(DEFAULT_MODEL)
    code, _, err = run_main(capsys, [*argv, "--output_dir", DEFAULT_MODEL / "out", *(["--overwrite"] * overwrite)])
    assert code == 2 and "lies inside the input" in one_line(err)
    assert tree_hash(DEFAULT_MODEL) == before and not (DEFAULT_MODEL / "out").exists()


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("relation", ["is", "lies inside"])  # ("contains" would name the bundled configs folder)
def test_demo_never_writes_over_its_bundled_pipeline(capsys, relation, overwrite):
    config = CONFIGS_DIR / "demo.yaml"
    before = tree_hash(config)
    output = RELATIONS[relation](config)
    code, _, err = run_main(capsys, ["demo", "--output_dir", output, *(["--overwrite"] * overwrite)])
    assert code == 2 and f"{relation} the input" in one_line(err)
    assert tree_hash(config) == before


@pytest.mark.parametrize("relation", list(RELATIONS))
def test_the_python_api_refuses_an_output_overlapping_an_input(inputs, relation):
    """Library users are protected too: erase(), evaluate_erasure() and run_bench() check before any work."""
    from classifiers.bench import BenchConfig, run_bench
    from concept_erase.diffusion.erasure import erase
    from concept_erase.diffusion.evaluation import EvaluationConfig, evaluate_erasure

    before = {k: tree_hash(p) for k, p in inputs.items()}
    pipeline, mask, npz = inputs["pipeline"], inputs["mask"], inputs["npz"]
    calls = [
        lambda: erase(pipeline, "fmn", ["seven"], output_dir=RELATIONS[relation](pipeline), overwrite=True),
        lambda: erase(None, "salun", ["seven"], {"mask_path": str(mask)}, RELATIONS[relation](mask), overwrite=True),
        lambda: evaluate_erasure(
            pipeline, EvaluationConfig(forget=["seven"]), output_dir=RELATIONS[relation](pipeline), overwrite=True
        ),
        lambda: evaluate_erasure(
            inputs["erasure"], EvaluationConfig(), output_dir=RELATIONS[relation](inputs["base"]), overwrite=True
        ),
        lambda: run_bench(BenchConfig(dataset=str(npz), seeds=[0]), RELATIONS[relation](npz)),
    ]
    for call in calls:
        with pytest.raises(OutputOverlapsInputError, match=f"{relation} the input"):
            call()
    assert {k: tree_hash(p) for k, p in inputs.items()} == before


STEP_CASES = {
    "train_classifier dataset": ("npz", "train_classifier", {"dataset": "{npz}"}),
    "saliency_mask model_dir": ("model", "saliency_mask", {"model_dir": "{model}"}),
    "unlearn model_dir": ("model", "unlearn", {"model_dir": "{model}"}),
    "unlearn method_config.mask_path": (
        "mask",
        "unlearn",
        {"model_dir": "{model}", "method": "finetune", "method_config": {"mask_path": "{mask}"}},
    ),
    "evaluate_classifier model_dir": ("model", "evaluate_classifier", {"model_dir": "{model}"}),
    "bench_classifiers dataset": ("npz", "bench_classifiers", {"dataset": "{npz}", "seeds": [0]}),
    "erase model": ("pipeline", "erase", {"method": "fmn", "concepts": ["seven"], "model": "{pipeline}"}),
    "evaluate_erasure judge": ("judge", "evaluate_erasure", {"model": "{pipeline}", "judge": "{judge}"}),
    "evaluate_erasure erasure's base": ("base", "evaluate_erasure", {"model": "{erasure}"}),
}


def _fill(value, inputs):
    if isinstance(value, str):
        return value.format(**{k: str(v) for k, v in inputs.items()})
    if isinstance(value, dict):
        return {k: _fill(v, inputs) for k, v in value.items()}
    return value


@pytest.mark.parametrize("relation", ["contains", "lies inside"])  # a step directory is never an input itself
@pytest.mark.parametrize("case", list(STEP_CASES))
def test_a_pipeline_step_refuses_to_write_into_an_input_it_reads(tmp_path, inputs, case, relation):
    """Steps called by any runner (or directly): the step directory, or ``steps/<id>`` it becomes, overlapping a
    path the step's config names is refused before the step does anything."""
    import pipelines.steps  # noqa: F401  (registers the steps)
    from concept_erase.core.registry import get_step
    from pipelines.runner import StepContext

    key, step, values = STEP_CASES[case]
    if relation == "contains" and key == "base":
        pytest.skip("the base model is named by the erasure's record, not by the step's config")
    given = dict(inputs)
    if relation == "contains":  # the input is the step's own earlier output, which steps/<id> would replace
        out = tmp_path / "out"
        given[key] = out / "steps" / "s" / inputs[key].name
        given[key].parent.mkdir(parents=True)
        copy = shutil.copytree if inputs[key].is_dir() else shutil.copy2
        copy(inputs[key], given[key])
        context = StepContext("p", "s", out / "steps" / ".s.tmp-1-00000000", out, 0, {})
    else:  # the pipeline writes inside the input
        context = StepContext("p", "s", given[key] / "steps" / ".s.tmp-1-00000000", given[key], 0, {})
    entry = get_step(step)
    config = entry.make_config(_fill(values, given))
    before = tree_hash(given[key])
    with pytest.raises(OutputOverlapsInputError, match=f"{relation} the input"):
        entry.target(context, config)
    assert tree_hash(given[key]) == before and not (given[key] / "steps").exists()


def test_config_paths_names_inputs_not_outputs():
    values = {
        "mask_path": "m.safetensors",
        "save_mask_path": "out.safetensors",
        "output_dir": "out",
        "logging_dir": "logs",
        "nested": {"records_path": "r.pt", "model_dir": "model", "prepared_path": ""},
        "methods": [{"mask_path": "n.safetensors"}],
        "epochs": 3,
        "judge": "j",
        "indices_file": "i.txt",
        "model_dirs": ["ignored-key"],
        "weights_path": ["w1", "w2"],
        "output_file": "o.txt",
    }
    expected = ["i.txt", "j", "m.safetensors", "model", "n.safetensors", "r.pt", "w1", "w2"]
    assert sorted(config_paths(values)) == expected


# ---------------------------------------------------------------------------------------------------- read-only


@pytest.fixture
def read_only(monkeypatch, tmp_path):
    """``tmp_path/ro`` reads as read-only (as for a normal user; root writes anywhere, so access() is faked)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real(p, mode, **kw))
    return ro


@pytest.mark.parametrize("target", ["ro/out", "ro/deeper/out", "ro"])
def test_a_read_only_output_is_refused_naming_the_users_path(tmp_path, read_only, target):
    out = tmp_path / target
    with pytest.raises(OutputNotWritableError) as info:
        check_output_dir(out, overwrite=True)
    message = str(info.value)
    assert message.startswith(f"output {out} cannot be written") and ".tmp-" not in message and "\n" not in message
    with pytest.raises(OutputNotWritableError):
        with atomic_output_dir(out, overwrite=True):
            pytest.fail("the body must not run")
    assert not [p for p in tmp_path.rglob(".*tmp-*")]


def test_a_read_only_output_fails_in_the_cli_before_the_job_runs(capsys, tmp_path, read_only, inputs):
    out = read_only / "eval"
    code, stdout, err = run_main(capsys, ["evaluate", "--model", inputs["model"], "--output_dir", out])
    line = one_line(err)
    assert code == 2 and f"output {out} cannot be written" in line and ".tmp-" not in line
    assert stdout == "" and not out.exists()


def test_a_mkdir_refused_by_the_file_system_names_the_users_path(tmp_path, monkeypatch):
    """A read-only file system (or a race) that access() did not foresee: the error still names the output."""
    out = tmp_path / "out"
    real_mkdir = Path.mkdir

    def refuse(self, *args, **kwargs):
        if self.name.startswith(".out.tmp-"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    with pytest.raises(OutputNotWritableError, match=f"^output {out} cannot be written") as info:
        with atomic_output_dir(out):
            pytest.fail("the body must not run")
    assert ".tmp-" not in str(info.value)
    assert isinstance(info.value, ConceptEraseError)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_really_read_only_directory_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(OutputNotWritableError, match="cannot be written"):
            check_output_dir(ro / "out")
    finally:
        ro.chmod(0o755)


# ---------------------------------------------------------------------------------------------------- umask


@pytest.fixture
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    yield set_mask
    os.umask(old)


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_outputs_get_the_modes_of_the_users_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0600
        sub = Path(__import__("tempfile").mkdtemp(dir=tmp))  # tempfile makes 0700 directories
        save_file({"w": torch.zeros(2)}, str(sub / "inner.safetensors"))
        (tmp / "metrics.json").write_text("{}\n")
    modes = {p.name if p.is_file() else "dir": p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes == {"model.safetensors": file_mode, "inner.safetensors": file_mode, "metrics.json": file_mode,
                     "dir": dir_mode}  # fmt: skip
    assert out.stat().st_mode & 0o777 == dir_mode

    single = tmp_path / "single.safetensors"
    with atomic_file(single) as tmp:
        save_file({"w": torch.zeros(2)}, str(tmp))
    assert single.stat().st_mode & 0o777 == file_mode


def test_a_deliberate_mode_is_kept(tmp_path, umask):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "run.sh").write_text("#!/bin/sh\n")
        (tmp / "run.sh").chmod(0o750)
    assert (out / "run.sh").stat().st_mode & 0o777 == 0o750


# ---------------------------------------------------------------------------------------------------- stale temps


@pytest.fixture(scope="module")
def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _stale(parent: Path, name: str, kind: str, pid: int, tag: str) -> Path:
    path = parent / f".{name}.{kind}-{pid}-{tag}"
    path.mkdir()
    (path / "half-written.bin").write_bytes(b"x" * 10)
    return path


def test_a_new_run_removes_the_temporaries_of_killed_runs_and_keeps_live_ones(tmp_path, dead_pid):
    dead = _stale(tmp_path, "out", "tmp", dead_pid, "0badc0de")
    dead_old = _stale(tmp_path, "out", "old", dead_pid, "deadbeef")
    live = _stale(tmp_path, "out", "tmp", os.getppid(), "1234abcd")  # a run in progress (our parent is alive)
    other = _stale(tmp_path, "other", "tmp", dead_pid, "0badc0de")  # another output's: not ours to judge here
    odd = tmp_path / ".out.tmp-notapid"
    odd.mkdir()
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert not dead.exists() and not dead_old.exists()
    assert live.exists() and other.exists() and odd.exists()
    assert (tmp_path / "out" / "a.txt").read_text() == "a"


def test_atomic_file_removes_the_temporaries_of_killed_runs(tmp_path, dead_pid):
    stale = tmp_path / f".metrics.json.tmp-{dead_pid}-abcdef01"
    stale.write_text("half")
    live = tmp_path / f".metrics.json.tmp-{os.getpid()}-abcdef02"
    live.write_text("in progress")
    with atomic_file(tmp_path / "metrics.json") as tmp:
        tmp.write_text("{}\n")
    assert not stale.exists() and live.exists()
    assert (tmp_path / "metrics.json").read_text() == "{}\n"


def test_remove_stale_temporaries_is_reusable_and_reports_what_it_removed(tmp_path, dead_pid):
    step = tmp_path / "steps" / "train"
    step.parent.mkdir()
    stale = _stale(step.parent, "train", "tmp", dead_pid, "00000001")
    assert remove_stale_temporaries(step) == [stale]
    assert remove_stale_temporaries(step) == []
    assert remove_stale_temporaries(tmp_path / "missing" / "x") == []


def test_a_sigkilled_run_leaves_a_temporary_the_next_run_removes(tmp_path):
    out = tmp_path / "out"
    code = (
        "import os, signal; from concept_erase.core.io import atomic_output_dir\n"
        f"with atomic_output_dir({str(out)!r}) as tmp:\n"
        "    (tmp / 'half').write_text('x'); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    left = [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]
    assert len(left) == 1  # what kill -9 leaves
    with atomic_output_dir(out) as tmp:
        (tmp / "done").write_text("y")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("where", ["is", "contains", "inside"])
def test_a_sisa_store_never_overlaps_its_data_set_or_its_request(tmp_path, capsys, where):
    """``sisa train`` writes its store, ``sisa forget`` writes into it: neither may touch the files they read."""
    import numpy as np

    data = tmp_path / "data" / "digits.npz"
    data.parent.mkdir()
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.random((60, 8)).astype("float32"), y=np.arange(60) % 3)
    store = {"is": data, "contains": tmp_path / "data", "inside": data / "store"}[where]
    before = data.read_bytes()
    train = ["sisa", "train", "--dataset", str(data), "--model", "mlp", "--shards", "2", "--slices", "1"]
    assert main([*train, "--store", str(store)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "would destroy that input" in err[0]
    assert data.read_bytes() == before and sorted(p.name for p in data.parent.iterdir()) == ["digits.npz"]
    request = tmp_path / "request" / "indices.txt"
    request.parent.mkdir()
    request.write_text("1\n")
    assert main(["sisa", "forget", "--store", str(request.parent), "--indices-file", str(request)]) == 2
    assert "would destroy that input" in capsys.readouterr().err
    assert sorted(p.name for p in request.parent.iterdir()) == ["indices.txt"]
