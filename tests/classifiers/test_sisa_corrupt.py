"""Every SISA file read back is checked: a damaged store file, ledger record or index file is one line on stderr
naming the file, exit 2, and nothing in the store changes (no file written, replaced or created)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from classifiers.data import load_dataset
from classifiers.sisa import SISAClassifier
from pipelines.cli import main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store on digits (3 shards x 3 slices of an mlp) with one deletion request in its ledger; tests copy it."""
    store = tmp_path_factory.mktemp("sisa-corrupt") / "store"
    sisa = SISAClassifier("mlp", n_shards=3, n_slices=3, epochs=1, store=store, show_progress=False)
    sisa.fit(load_dataset("digits"))
    sisa.unlearn([sisa.shards_[0][2][0]])
    return store, sisa.shards_


def _copy(trained, tmp_path):
    import shutil

    return Path(shutil.copytree(trained[0], tmp_path / "store"))


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


def _refused(capsys, store, argv, path) -> None:
    """``sisa ARGV`` exits 2 with one line naming ``path``, and leaves the store byte for byte as it was."""
    before = _snapshot(store)
    assert main(["sisa", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert str(path) in err, err
    assert _snapshot(store) == before


def _final_checkpoint(store: Path, shard: int = 0) -> Path:
    key = json.loads((store / "models.json").read_text())["shards"][shard]["checkpoint"]
    return store / "checkpoints" / f"{key}.safetensors"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _edit_json(name: str, edit):
    def damage(store: Path) -> Path:
        path = store / name
        data = json.loads(path.read_text())
        edit(data)
        path.write_text(json.dumps(data))
        return path

    return damage


def _raw(name: str, how: str):
    def damage(store: Path) -> Path:
        path = _final_checkpoint(store) if name == "checkpoint" else store / name
        if how == "truncate":
            _truncate(path)
        elif how == "garbage":
            path.write_bytes(b"\xff\xfe\x00garbage\x9c" * 8)
        else:
            path.write_bytes(b"")
        return path

    return damage


def _set(key, value):
    def edit(data):
        data[key] = value

    return edit


def _shards(edit):
    return _edit_json("shards.json", edit)


def _ledger(edit):
    """Rewrite the ledger's first (pending) record with ``edit(record)``, or replace the lines with ``edit(lines)``."""

    def damage(store: Path) -> Path:
        path = store / "ledger.jsonl"
        lines = path.read_text().splitlines()
        if getattr(edit, "lines", False):
            lines = edit(lines)
        else:
            record = json.loads(lines[0])
            edit(record)
            lines[0] = json.dumps(record)
        path.write_text("".join(line + "\n" for line in lines))
        return path

    return damage


def _lines(fn):
    fn.lines = True
    return fn


def _delete(key):
    def edit(data):
        del data[key]

    return edit


def _other_tensors(store: Path) -> Path:
    path = _final_checkpoint(store, 1)
    save_file({"something.else": torch.zeros(3)}, str(path))
    return path


def _checkpoint_directory(store: Path) -> Path:
    path = _final_checkpoint(store, 2)
    path.unlink()
    path.mkdir()
    return path


STORE_DAMAGE = {
    # manifest.json
    "manifest-truncated": lambda s: (_truncate(s / "manifest.json"), s / "manifest.json")[1],
    "manifest-garbage": _raw("manifest.json", "garbage"),
    "manifest-empty": _raw("manifest.json", "empty"),
    "manifest-empty-object": _edit_json("manifest.json", lambda d: d.clear()),
    "manifest-not-an-object": lambda s: ((s / "manifest.json").write_text("[1, 2]"), s / "manifest.json")[1],
    "manifest-missing-field": _edit_json("manifest.json", _delete("n_shards")),
    "manifest-wrong-type": _edit_json("manifest.json", _set("n_slices", "3")),
    "manifest-negative": _edit_json("manifest.json", _set("num_samples", -5)),
    "manifest-unknown-strategy": _edit_json("manifest.json", _set("strategy", "nope")),
    "manifest-recipe-field": _edit_json("manifest.json", lambda d: d["recipe"].pop("epochs")),
    "manifest-format": _edit_json("manifest.json", _set("format", 99)),
    "manifest-bad-model": _edit_json("manifest.json", lambda d: d["model"].update(hidden=3)),
    "manifest-bad-split": _edit_json("manifest.json", lambda d: d["split"].update(colour="red")),
    # shards.json
    "shards-truncated": lambda s: (_truncate(s / "shards.json"), s / "shards.json")[1],
    "shards-garbage": _raw("shards.json", "garbage"),
    "shards-empty": _raw("shards.json", "empty"),
    "shards-wrong-count": _shards(lambda d: d.pop()),
    "shards-wrong-type": _shards(lambda d: d.__setitem__(0, {"a": 1})),
    "shards-not-an-int": _shards(lambda d: d[0][0].__setitem__(0, "7")),
    "shards-index-out-of-range": _shards(lambda d: d[0][0].__setitem__(0, 1347)),
    "shards-negative-index": _shards(lambda d: d[0][0].__setitem__(0, -1)),
    "shards-duplicate-index": _shards(lambda d: d[1][0].__setitem__(0, d[0][0][1])),
    # ledger.jsonl
    "ledger-garbage": _raw("ledger.jsonl", "garbage"),
    "ledger-empty": _raw("ledger.jsonl", "empty"),
    "ledger-lines-lost": _ledger(_lines(lambda lines: lines[1:])),
    "ledger-missing-field": _ledger(_delete("new_indices")),
    "ledger-wrong-type": _ledger(_set("indices", "5")),
    "ledger-index-out-of-range": _ledger(lambda r: r.update(indices=[99999], new_indices=[99999])),
    "ledger-negative-index": _ledger(lambda r: r.update(indices=[-3], new_indices=[-3])),
    "ledger-duplicate-index": _ledger(lambda r: r.update(indices=r["indices"] * 2)),
    "ledger-duplicate-request": _ledger(_lines(lambda lines: [lines[0], *lines])),
    "ledger-bad-status": _ledger(_set("status", "deleted")),
    "ledger-done-before-pending": _ledger(_lines(lambda lines: lines[::-1])),
    # checkpoints
    "checkpoint-truncated": _raw("checkpoint", "truncate"),
    "checkpoint-garbage": _raw("checkpoint", "garbage"),
    "checkpoint-empty": _raw("checkpoint", "empty"),
    "checkpoint-other-tensors": _other_tensors,
    "checkpoint-a-directory": _checkpoint_directory,
    # models.json
    "models-truncated": lambda s: (_truncate(s / "models.json"), s / "models.json")[1],
    "models-garbage": _raw("models.json", "garbage"),
    "models-empty": _raw("models.json", "empty"),
    "models-missing-field": _edit_json("models.json", _delete("shards")),
    "models-wrong-type": _edit_json("models.json", _set("version", "1")),
}


@pytest.mark.parametrize("damage", list(STORE_DAMAGE), ids=list(STORE_DAMAGE))
@pytest.mark.parametrize("command", ["forget", "evaluate"])
def test_a_damaged_store_file_is_one_line_naming_it(trained, tmp_path, capsys, damage, command):
    store = _copy(trained, tmp_path)
    path = STORE_DAMAGE[damage](store)
    argv = [command, "--store", str(store)] + (["--indices", "8"] if command == "forget" else [])
    _refused(capsys, store, argv, path)


def test_a_damaged_checkpoint_a_deletion_resumes_from_is_refused_before_the_ledger(trained, tmp_path, capsys):
    store = _copy(trained, tmp_path)
    finals = {_final_checkpoint(store, s).name for s in range(3)}
    for path in (store / "checkpoints").iterdir():
        if path.name not in finals:
            path.write_bytes(b"not a checkpoint")
    late = trained[1][1][2][0]  # slice 2 of shard 1: retraining resumes from shard 1's slice-1 checkpoint
    _refused(capsys, store, ["forget", "--store", str(store), "--indices", str(late)], store / "checkpoints")


INDEX_FILES = {
    "out-of-range.txt": ("5 1347", "index 1347 is out of range for the 1347 training samples"),
    "negative.txt": ("5,-2", "index -2 is out of range"),
    "duplicate.txt": ("5 6 5", "duplicate indices [5]"),
    "empty.txt": ("", "holds no indices"),
    "garbage.txt": (b"\xff\xfe\x00\x9c", "expected integer indices"),
    "words.txt": ("5 six", "expected integer indices"),
    "floats.json": ("[1.5, 2]", "expected integer indices"),
    "object.json": ('{"indices": [1]}', "expected integer indices"),
    "truncated.json": ("[1, 2", "expected integer indices"),
    "truncated.npy": (None, "expected integer indices"),
    "floats.npy": (np.array([1.0, 2.0]), "expected integer indices"),
    "out-of-range.npy": (np.array([4, 5000]), "index 5000 is out of range"),
    "a-directory": ("dir", "is a directory"),
    "missing.txt": ("missing", "index file not found"),
}


@pytest.mark.parametrize("name", list(INDEX_FILES))
@pytest.mark.parametrize("command", ["forget", "evaluate"])
def test_a_bad_indices_file_is_one_line_naming_it(trained, tmp_path, capsys, name, command):
    store = _copy(trained, tmp_path)
    content, message = INDEX_FILES[name]
    path = tmp_path / name
    if isinstance(content, str) and content == "dir":
        path.mkdir()
    elif isinstance(content, str) and content == "missing":
        pass
    elif name.endswith(".npy"):
        if content is None:
            np.save(path, np.arange(100))
            _truncate(path)
        else:
            np.save(path, content)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    before = _snapshot(store)
    assert main(["sisa", command, "--store", str(store), "--indices-file", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and message in err, err
    assert _snapshot(store) == before


@pytest.mark.parametrize("command", ["train", "forget", "evaluate"])
def test_a_store_path_that_is_a_file_is_refused(tmp_path, capsys, command):
    path = tmp_path / "store"
    path.write_text("not a store")
    extra = {"train": ["--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices", "1", "--epochs", "1"],
             "forget": ["--indices", "1"], "evaluate": []}[command]  # fmt: skip
    assert main(["sisa", command, "--store", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "not a" in err and "directory" in err, err
    assert path.read_text() == "not a store" and sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("command", ["train", "forget", "evaluate"])
def test_a_folder_that_is_not_a_store_gets_no_lock_file(tmp_path, capsys, command):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    extra = {"train": ["--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices", "1", "--epochs", "1"],
             "forget": ["--indices", "1"], "evaluate": []}[command]  # fmt: skip
    assert main(["sisa", command, "--store", str(folder), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(folder) in err and "not a SISA store" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_the_api_never_creates_files_in_a_folder_that_is_not_a_store(tmp_path):
    from concept_erase.core.errors import StoreError

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and is not a SISA store"):
        SISAClassifier("mlp", n_shards=2, n_slices=1, epochs=1, store=folder).fit(load_dataset("digits"))
    with pytest.raises(StoreError, match="is not a SISA store"):
        SISAClassifier.from_store(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder is what train makes into a store
    SISAClassifier("mlp", n_shards=2, n_slices=1, epochs=1, store=empty, show_progress=False).fit(
        load_dataset("digits")
    )
    assert (empty / "manifest.json").is_file()


PROBABILITIES = {
    "truncated.npy": "not a .npy array",
    "garbage.npy": "not a .npy array",
    "short.npy": "has 5 values but the training set has 1347 samples",
    "negative.npy": "must be finite and non-negative",
    "nan.npy": "must be finite and non-negative",
    "a-directory.npy": "is a directory",
}


@pytest.mark.parametrize("name", list(PROBABILITIES))
def test_bad_deletion_probabilities_are_one_line_naming_the_file(tmp_path, capsys, name):
    path = tmp_path / name
    if name == "truncated.npy":
        np.save(path, np.ones(1347))
        _truncate(path)
    elif name == "garbage.npy":
        path.write_bytes(b"\x93NUMPY garbage \xff\x00" * 4)
    elif name == "a-directory.npy":
        path.mkdir()
    else:
        values = {"short.npy": np.ones(5), "negative.npy": -np.ones(1347), "nan.npy": np.full(1347, np.nan)}[name]
        np.save(path, values)
    store = tmp_path / "store"
    argv = ["sisa", "train", "--dataset", "digits", "--model", "mlp", "--shards", "2", "--slices", "1"]
    argv += ["--strategy", "distribution", "--deletion_probabilities", str(path), "--store", str(store)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and PROBABILITIES[name] in err, err
    assert not store.exists()
