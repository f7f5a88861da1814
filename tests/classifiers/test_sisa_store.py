"""The SISA store: ledger, corrupt ledgers, the lock, crash resumption, two processes, and the CLI."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from classifiers.data import load_dataset
from classifiers.sisa import SISAClassifier
from concept_erase.core.errors import StoreError
from pipelines.cli import main

HERE = Path(__file__).parent
ENV = {"OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store on digits (3 shards x 3 slices of an mlp), never modified: tests copy it."""
    store = tmp_path_factory.mktemp("sisa") / "store"
    sisa = SISAClassifier("mlp", n_shards=3, n_slices=3, epochs=1, store=store, show_progress=False)
    sisa.fit(load_dataset("digits"))
    return store, sisa.shards_


def _copy(trained, tmp_path, name="store"):
    return Path(shutil.copytree(trained[0], tmp_path / name))


def _cli(*args, killed_after_checkpoints: int | None = None):
    """``concept-erase sisa ARGS`` in a subprocess; with ``killed_after_checkpoints=N`` it is SIGKILLed right after
    writing its N-th stage checkpoint (``sisa_crash.py``)."""
    if killed_after_checkpoints is None:
        command = [sys.executable, "-m", "pipelines.cli", "sisa", *map(str, args)]
    else:
        command = [sys.executable, str(HERE / "sisa_crash.py"), str(killed_after_checkpoints), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env={**os.environ, **ENV}, timeout=120)


def _requests(store):
    keep = ("request_id", "status", "indices", "new_indices", "already_deleted", "affected", "version")
    lines = (store / "ledger.jsonl").read_text().splitlines()
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, lines)]


def _final_tensors(store):
    models = json.loads((store / "models.json").read_text())
    return models, [load_file(str(store / "checkpoints" / f"{s['checkpoint']}.safetensors")) for s in models["shards"]]


def _assert_same_store(a, b):
    models_a, tensors_a = _final_tensors(a)
    models_b, tensors_b = _final_tensors(b)
    assert models_a == models_b
    for ta, tb in zip(tensors_a, tensors_b):
        assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert _requests(a) == _requests(b)


def test_ledger_records_requests_and_noop_redeletion(trained, tmp_path):
    store = _copy(trained, tmp_path)
    sisa = SISAClassifier.from_store(store, show_progress=False)
    sisa.unlearn([3, 4])
    again = sisa.unlearn([4, 3])
    assert again["noop"] and again["already_deleted"] == [3, 4] and again["retrained_slices"] == {}
    records = _requests(store)
    assert [(r["request_id"], r["status"]) for r in records] == [(1, "pending"), (1, "done"), (2, "noop")]
    assert records[2]["version"] == records[0]["version"] == 1
    assert json.loads((store / "models.json").read_text())["deleted"] == 2


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda text: text.replace('"status":"done"', '"status":"dnoe"'), "line 2 is corrupt"),
        (lambda text: text + '{"request_id":2,"status":"pen', "line 3 is truncated"),
        (lambda text: "\n".join(["not json", *text.splitlines()]) + "\n", "line 1 is corrupt"),
    ],
)
def test_corrupt_or_truncated_ledger_is_refused_and_never_rewritten(trained, tmp_path, capsys, damage, message):
    store = _copy(trained, tmp_path)
    SISAClassifier.from_store(store, show_progress=False).unlearn([7])
    ledger = store / "ledger.jsonl"
    ledger.write_text(damage(ledger.read_text()))
    damaged = ledger.read_bytes()
    with pytest.raises(StoreError, match=message):
        SISAClassifier.from_store(store, show_progress=False)
    assert main(["sisa", "forget", "--store", str(store), "--indices", "8"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert ledger.read_bytes() == damaged


@pytest.mark.slow
def test_two_processes_forgetting_at_once_leave_a_consistent_store(trained, tmp_path):
    store = _copy(trained, tmp_path)
    shards = trained[1]
    a, b = shards[0][0][:2], shards[1][0][:2]  # slice 0: each request retrains a whole shard
    env = {**os.environ, **ENV}
    procs = [
        subprocess.Popen([sys.executable, "-m", "pipelines.cli", "sisa", "forget", "--store", str(store),
                          "--indices", ",".join(map(str, ids))], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for ids in (a, b)
    ]  # fmt: skip
    for proc in procs:
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-2000:]
    records = _requests(store)
    assert [(r["request_id"], r["status"]) for r in records] == [
        (1, "pending"),
        (1, "done"),
        (2, "pending"),
        (2, "done"),
    ]
    assert sorted(i for r in records for i in r.get("new_indices", [])) == sorted(a + b)
    reference = _copy(trained, tmp_path, "reference")
    first = [r["indices"] for r in records if r["status"] == "pending"]
    sisa = SISAClassifier.from_store(reference, show_progress=False)
    for ids in first:
        sisa.unlearn(ids)
    _assert_same_store(store, reference)


@pytest.mark.slow
def test_kill_9_mid_retraining_then_rerun_equals_an_uninterrupted_run(trained, tmp_path):
    crashed, clean = _copy(trained, tmp_path, "crashed"), _copy(trained, tmp_path, "clean")
    indices = ",".join(map(str, trained[1][0][0][:3]))  # slice 0 of shard 0: three stages to retrain
    killed = _cli("forget", "--store", crashed, "--indices", indices, killed_after_checkpoints=1)
    assert killed.returncode == -9
    assert [r["status"] for r in _requests(crashed)] == ["pending"]  # interrupted after one stage checkpoint
    resumed = _cli("forget", "--store", crashed, "--indices", indices)
    assert resumed.returncode == 0, resumed.stderr
    assert _cli("forget", "--store", clean, "--indices", indices).returncode == 0
    _assert_same_store(crashed, clean)


@pytest.mark.slow
def test_two_processes_build_the_same_store_as_one(tmp_path, free_port):
    multi, single = tmp_path / "multi", tmp_path / "single"
    script = str(HERE / "sisa_dist.py")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port)]
    env = {**os.environ, **ENV}
    proc = subprocess.run([*launcher, script, str(multi)], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout
    proc = subprocess.run([sys.executable, script, str(single)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _assert_same_store(multi, single)
    assert sorted(os.listdir(multi / "checkpoints")) == sorted(os.listdir(single / "checkpoints"))


def test_cli_train_forget_evaluate(tmp_path, capsys):
    store = tmp_path / "cli"
    args = ["sisa", "train", "--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices", "2"]
    assert main([*args, "--epochs", "1", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "trained 2 shards x 2 slices of mlp on 1347 digits samples" in out and "per-shard test accuracy" in out
    (tmp_path / "forget.txt").write_text("5 6\n7")
    assert main(["sisa", "forget", "--store", str(store), "--indices-file", str(tmp_path / "forget.txt")]) == 0
    assert "request 1: deleted 3 samples" in capsys.readouterr().out
    assert main(["sisa", "forget", "--store", str(store), "--indices", "5"]) == 0
    assert "already deleted (no-op, recorded)" in capsys.readouterr().out
    assert main(["sisa", "evaluate", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "ledger: 2 requests (1 deleting 3 samples, 1 no-op)" in out
    assert "UA" in out and "MIA-efficacy" in out and "oracle" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["forget", "--store", "{store}", "--indices", "99999"], "out of range for the 1347 training samples"),
        (["forget", "--store", "{store}", "--indices", "1,x"], "--indices takes integers"),
        (["forget", "--store", "{store}"], "name the training indices"),
        (["evaluate", "--store", "{tmp}/missing"], "SISA store not found"),
        (["train", "--store", "{tmp}/t", "--strategy", "nope"], "unknown sharding strategy 'nope'"),
        (["train", "--store", "{tmp}/t", "--shards", "0"], "n_shards must be between 1"),
        (["train", "--store", "{tmp}/t", "--strategy", "distribution", "--deletion_probabilities", "{tmp}/p.npy"],
         "deletion probabilities not found"),
        (["train", "--store", "{store}", "--model", "mlp", "--shards", "4"], "made with another"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line_exit_2(trained, tmp_path, capsys, argv, message):
    argv = [a.format(store=trained[0], tmp=tmp_path) for a in argv]
    assert main(["sisa", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
