"""Every file the toolkit reads back is checked on load: a truncated file, garbage bytes, an empty file, valid JSON
that misses a field or holds a value of the wrong type, a tensor of the wrong shape is refused with one line that
names the path and what is wrong (a ConceptEraseError, never a KeyError / TypeError / UnicodeDecodeError)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from classifiers.data import load_dataset, read_indices
from classifiers.distruction.bgd import (
    INFO_FILE,
    WEIGHTS_FILE,
    PreparedPosterior,
    architecture_fingerprint,
    weights_digest,
)
from classifiers.harness import read_unlearn_record
from classifiers.methods.amnesiac import RECORDS_FORMAT, load_records
from classifiers.models import CONFIG_NAME, WEIGHTS_NAME, build_model, load_model, save_model
from concept_erase.core.errors import CheckpointError, ConceptEraseError, ConfigError, MaskError, ModelLoadError
from concept_erase.core.saliency import SaliencyMask
from concept_erase.core.trainer import find_checkpoint, read_trainer_state
from concept_erase.diffusion.erasure import ERASURE_FILE, read_erasure
from concept_erase.diffusion.judge import DEFAULT_JUDGE, load_judge
from concept_erase.diffusion.tiny_sd import RECIPE_FILE, read_recipe

GARBAGE = bytes(range(256)) * 4  # not UTF-8, not JSON, not a safetensors header


def _json_family(valid: dict, missing: str, wrong_key: str, wrong_value, *, extra=()):
    """``(id, bytes, expected phrase)`` for a JSON file: the usual corruptions plus a missing and a mistyped field."""
    text = json.dumps(valid, indent=2)
    broken = {k: v for k, v in valid.items() if k != missing}
    return [
        ("truncated", text[: len(text) // 2].encode(), "not valid JSON"),
        ("garbage", GARBAGE, "not UTF-8"),
        ("empty", b"", "empty"),
        ("pickle", pickle.dumps(valid), "not UTF-8"),
        ("list", b"[1, 2, 3]", "expected a JSON object, got list"),
        ("missing-field", json.dumps(broken).encode(), repr(missing)),
        ("wrong-type", json.dumps({**valid, wrong_key: wrong_value}).encode(), wrong_key),
        *extra,
    ]


def _one_line_naming(exc: BaseException, path: Path, phrase: str) -> None:
    message = str(exc)
    assert isinstance(exc, ConceptEraseError), type(exc)
    assert "\n" not in message, message
    assert str(path) in message, message
    assert phrase in message, message


# ---------------------------------------------------------------------------------------------------- trainer

STATE = {"global_step": 4, "micro_batches": 4, "epoch": 0, "config": {"max_train_steps": 8}}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        STATE,
        "micro_batches",
        "global_step",
        "four",
        extra=[
            ("negative", json.dumps({**STATE, "global_step": -1}).encode(), "non-negative integer"),
            ("bool", json.dumps({**STATE, "micro_batches": True}).encode(), "non-negative integer"),
        ],
    ),
)
def test_trainer_checkpoint_state(tmp_path, case, content, phrase):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_bytes(content)
    phrase = {"not UTF-8": "not UTF-8 text", "empty": "not valid JSON"}.get(phrase, phrase)
    with pytest.raises(CheckpointError) as info:
        read_trainer_state(checkpoint)
    _one_line_naming(info.value, checkpoint / "trainer_state.json", phrase)


def test_trainer_checkpoint_missing_state_and_a_file_for_a_directory(tmp_path):
    (tmp_path / "checkpoint-1").mkdir()
    with pytest.raises(CheckpointError, match="trainer_state.json is missing"):
        read_trainer_state(tmp_path / "checkpoint-1")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a checkpoint directory"):
        find_checkpoint(tmp_path, str(tmp_path / "file"))
    assert read_trainer_state(_valid_state(tmp_path))["global_step"] == 4


def _valid_state(tmp_path: Path) -> Path:
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir(exist_ok=True)
    (checkpoint / "trainer_state.json").write_text(json.dumps(STATE))
    return checkpoint


# ---------------------------------------------------------------------------------------------------- saliency mask


def _mask_file(tmp_path: Path) -> Path:
    scores = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.arange(3.0)}
    return SaliencyMask.from_scores(scores, ratio=0.5).save(tmp_path / "mask.safetensors")


def _rewrite_mask_header(path: Path, change) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    info = json.loads(header["mask"])
    header, tensors = change(header, info, tensors)
    save_file(tensors, str(path), metadata=header)


def _set(header, info, tensors, **changes):
    for key, value in changes.items():
        if key == "mask":
            header = {**header, "mask": value}
        elif key == "drop_tensor":
            tensors = {k: v for k, v in tensors.items() if k != value}
        elif key == "packed":
            tensors = {**tensors, "w": value}
        else:
            info["parameters"][0][key] = value
    if "mask" not in changes:
        header = {**header, "mask": json.dumps(info)}
    return header, tensors


MASK_CASES = [
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is corrupt"),
    ("garbage", lambda p: p.write_bytes(GARBAGE), "is corrupt"),
    ("empty", lambda p: p.write_bytes(b""), "is corrupt"),
    ("pickle", lambda p: p.write_bytes(pickle.dumps({"w": [1, 2]})), "is corrupt"),
    ("no-mask-entry", lambda p: _rewrite_mask_header(p, lambda h, i, t: ({"format": h["format"]}, t)), "no 'mask'"),
    ("mask-not-json", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, mask="{oops")), "not valid JSON"),
    ("mask-a-list", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, mask="[]")), "JSON object"),
    ("shape-a-string", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, shape="3x4")), "'shape'"),
    ("kept-too-many", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, kept=10**6)), "'kept'"),
    ("name-missing", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, name=None)), "'name'"),
    ("tensor-missing", lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, drop_tensor="w")), "no tensor"),
    (
        "tensor-wrong-shape",
        lambda p: _rewrite_mask_header(p, lambda h, i, t: _set(h, i, t, packed=torch.zeros(40, dtype=torch.uint8))),
        "bytes",
    ),
]


@pytest.mark.parametrize("case, corrupt, phrase", MASK_CASES, ids=[c[0] for c in MASK_CASES])
def test_saliency_mask(tmp_path, case, corrupt, phrase):
    path = _mask_file(tmp_path)
    assert len(SaliencyMask.load(path)) == 2
    corrupt(path)
    with pytest.raises(MaskError) as info:
        SaliencyMask.load(path)
    assert "\n" not in str(info.value) and phrase in str(info.value), str(info.value)
    if case != "tensor-wrong-shape":  # that one names the parameter
        assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------------------- tiny-SD recipe

RECIPE = {"recipe": {"resolution": 8, "seed": 0, "unet_steps": 10}}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        RECIPE,
        "recipe",
        "recipe",
        [1, 2],
        extra=[
            ("unknown-key", json.dumps({"recipe": {"resolutoin": 8}}).encode(), "unknown key 'resolutoin'"),
            ("field-wrong-type", json.dumps({"recipe": {"seed": "zero"}}).encode(), "seed"),
        ],
    ),
)
def test_tiny_sd_recipe(tmp_path, case, content, phrase):
    (tmp_path / RECIPE_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_recipe(tmp_path)
    _one_line_naming(info.value, tmp_path / RECIPE_FILE, phrase)


def test_tiny_sd_recipe_absent_is_none_and_valid_reads(tmp_path):
    assert read_recipe(tmp_path) is None
    (tmp_path / RECIPE_FILE).write_text(json.dumps(RECIPE))
    assert read_recipe(tmp_path).unet_steps == 10


# ---------------------------------------------------------------------------------------------------- erasure.json

ERASURE = {
    "method": "fmn",
    "concepts": ["seven"],
    "base_model": "/models/tiny",
    "artifact": {"format": "lora", "path": "lora.safetensors", "bytes": 10},
    "seconds": 1.5,
    "steps": 3,
}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        ERASURE,
        "base_model",
        "concepts",
        "seven",
        extra=[
            ("no-concepts", json.dumps({**ERASURE, "concepts": []}).encode(), "'concepts'"),
            ("bad-format", json.dumps({**ERASURE, "artifact": {"format": "zip"}}).encode(), "artifact.format"),
            ("seconds-a-string", json.dumps({**ERASURE, "seconds": "1s"}).encode(), "'seconds'"),
        ],
    ),
)
def test_erasure_record(tmp_path, case, content, phrase):
    (tmp_path / ERASURE_FILE).write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_erasure(tmp_path)
    _one_line_naming(info.value, tmp_path / ERASURE_FILE, phrase)


def test_erasure_record_absent_is_none_and_a_directory_is_refused(tmp_path):
    assert read_erasure(tmp_path) is None
    (tmp_path / ERASURE_FILE).mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        read_erasure(tmp_path)


# ---------------------------------------------------------------------------------------------------- judge


@pytest.fixture
def judge_dir(tmp_path) -> Path:
    return Path(shutil.copytree(DEFAULT_JUDGE, tmp_path / "judge"))


def _judge_config() -> dict:
    return json.loads((DEFAULT_JUDGE / "judge_config.json").read_text())


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        {"labels": ["zero", "one"], "resolution": 8},
        "labels",  # missing labels is a valid default; checked below through the wrong-type cases instead
        "resolution",
        "eight",
        extra=[
            ("unknown-key", json.dumps({"resolutoin": 8}).encode(), "unknown key 'resolutoin'"),
            ("labels-not-strings", json.dumps({"labels": [1, 2]}).encode(), "labels"),
        ],
    ),
)
def test_judge_config(judge_dir, case, content, phrase):
    if case == "missing-field":
        pytest.skip("every judge field has a default")
    (judge_dir / "judge_config.json").write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_judge(judge_dir)
    _one_line_naming(info.value, judge_dir / "judge_config.json", phrase)


@pytest.mark.parametrize(
    "case, phrase",
    [("truncated", "are corrupt"), ("garbage", "are corrupt"), ("empty", "are corrupt"), ("other-shape", "do not fit")],
)
def test_judge_weights(judge_dir, case, phrase):
    weights = judge_dir / "model.safetensors"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[:100])
    elif case == "garbage":
        weights.write_bytes(GARBAGE)
    elif case == "empty":
        weights.write_bytes(b"")
    else:  # weights of another architecture than the config describes
        (judge_dir / "judge_config.json").write_text(json.dumps({**_judge_config(), "channels": 8}))
    with pytest.raises(ModelLoadError) as info:
        load_judge(judge_dir)
    _one_line_naming(info.value, weights, phrase)


# ---------------------------------------------------------------------------------------------------- classifier models


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return save_model(build_model("mlp", 3, (1, 4, 4), hidden_sizes=[5]), tmp_path / "model")


def _model_config() -> dict:
    return {"name": "mlp", "num_classes": 3, "input_shape": [1, 4, 4], "hidden_sizes": [5]}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        _model_config(),
        "num_classes",
        "hidden_sizes",
        "five",
        extra=[
            ("unknown-model", json.dumps({**_model_config(), "name": "resnet"}).encode(), "unknown model 'resnet'"),
            ("unknown-key", json.dumps({**_model_config(), "layers": 2}).encode(), "unknown key 'layers'"),
            ("other-architecture", json.dumps({**_model_config(), "hidden_sizes": [7]}).encode(), "does not match"),
        ],
    ),
)
def test_classifier_model_config(model_dir, case, content, phrase):
    (model_dir / CONFIG_NAME).write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_model(model_dir)
    path = model_dir / (WEIGHTS_NAME if case == "other-architecture" else CONFIG_NAME)
    _one_line_naming(info.value, path, "needs num_classes" if case == "missing-field" else phrase)


@pytest.mark.parametrize("case", ["truncated", "garbage", "empty", "pickle"])
def test_classifier_model_weights(model_dir, case):
    weights = model_dir / WEIGHTS_NAME
    content = {"truncated": weights.read_bytes()[:60], "garbage": GARBAGE, "empty": b"", "pickle": pickle.dumps([1])}
    weights.write_bytes(content[case])
    with pytest.raises(CheckpointError) as info:
        load_model(model_dir)
    _one_line_naming(info.value, weights, "is corrupt")


def test_a_model_path_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "model.bin").write_bytes(GARBAGE)
    with pytest.raises(ConfigError, match="is a file; a classifier model is a directory"):
        load_model(tmp_path / "model.bin")


# ---------------------------------------------------------------------------------------------------- unlearn.json

UNLEARN = {"method": "finetune", "forget_classes": [3], "config": {}}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        UNLEARN,
        "method",
        "forget_classes",
        "three",
        extra=[("classes-not-ints", json.dumps({**UNLEARN, "forget_classes": ["3"]}).encode(), "class indices")],
    ),
)
def test_unlearn_record(tmp_path, case, content, phrase):
    if case == "missing-field":
        pytest.skip("unlearn.json fields are optional (older records)")
    (tmp_path / "unlearn.json").write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        read_unlearn_record(tmp_path)
    _one_line_naming(info.value, tmp_path / "unlearn.json", phrase)


def test_unlearn_record_absent_is_none(tmp_path):
    assert read_unlearn_record(tmp_path) is None
    (tmp_path / "unlearn.json").write_text(json.dumps(UNLEARN))
    assert read_unlearn_record(tmp_path)["forget_classes"] == [3]


# ---------------------------------------------------------------------------------------------------- DiStruction


@pytest.fixture
def prepared(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", 3, (1, 4, 4), hidden_sizes=[5])
    params = dict(model.named_parameters())
    mean = {k: p.detach().clone() for k, p in params.items()}
    sigma = {k: torch.full_like(p, 0.01) for k, p in params.items()}
    info = {"architecture": architecture_fingerprint(model), "weights_sha256": weights_digest(params)}
    directory = PreparedPosterior(mean, sigma, info).save(tmp_path / "prepared")
    assert PreparedPosterior.load(directory, model).info == info
    return directory, model


def _tensors(directory: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(directory / WEIGHTS_FILE))


PREPARED_CASES = [
    (
        "info-truncated",
        lambda d: (d / INFO_FILE).write_text((d / INFO_FILE).read_text()[:20]),
        INFO_FILE,
        "not valid JSON",
    ),
    ("info-garbage", lambda d: (d / INFO_FILE).write_bytes(GARBAGE), INFO_FILE, "not UTF-8"),
    ("info-empty", lambda d: (d / INFO_FILE).write_bytes(b""), INFO_FILE, "empty"),
    ("info-list", lambda d: (d / INFO_FILE).write_text("[]"), INFO_FILE, "JSON object"),
    (
        "info-missing-field",
        lambda d: (d / INFO_FILE).write_text(json.dumps({"architecture": {}})),
        INFO_FILE,
        "'weights_sha256'",
    ),
    (
        "info-wrong-type",
        lambda d: (d / INFO_FILE).write_text(json.dumps({"architecture": "mlp", "weights_sha256": "x"})),
        INFO_FILE,
        "'architecture'",
    ),
    (
        "weights-truncated",
        lambda d: (d / WEIGHTS_FILE).write_bytes((d / WEIGHTS_FILE).read_bytes()[:50]),
        WEIGHTS_FILE,
        "corrupt",
    ),
    ("weights-garbage", lambda d: (d / WEIGHTS_FILE).write_bytes(GARBAGE), WEIGHTS_FILE, "corrupt"),
    (
        "tensor-missing",
        lambda d: save_file(
            {k: v for k, v in _tensors(d).items() if not k.startswith("sigma/")}, str(d / WEIGHTS_FILE)
        ),
        WEIGHTS_FILE,
        "is missing",
    ),
    (
        "tensor-wrong-shape",
        lambda d: save_file({k: v.reshape(-1) for k, v in _tensors(d).items()}, str(d / WEIGHTS_FILE)),
        WEIGHTS_FILE,
        "shape",
    ),
    (
        "sigma-negative",
        lambda d: save_file(
            {k: (-v if k.startswith("sigma/") else v) for k, v in _tensors(d).items()}, str(d / WEIGHTS_FILE)
        ),
        WEIGHTS_FILE,
        "non-positive",
    ),
]


@pytest.mark.parametrize("case, corrupt, name, phrase", PREPARED_CASES, ids=[c[0] for c in PREPARED_CASES])
def test_distruction_prepared_artifact(prepared, case, corrupt, name, phrase):
    directory, model = prepared
    corrupt(directory)
    with pytest.raises(CheckpointError) as info:
        PreparedPosterior.load(directory, model)
    _one_line_naming(info.value, directory / name, phrase)


# ---------------------------------------------------------------------------------------------------- amnesiac


@pytest.fixture
def records(tmp_path):
    torch.manual_seed(0)
    model = build_model("mlp", 3, (1, 4, 4), hidden_sizes=[5])
    steps = 2
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = {n: torch.zeros(steps, *p.shape) for n, p in model.named_parameters()}
    tensors = {f"delta.{n}": d for n, d in deltas.items()} | {f"initial.{n}": v for n, v in initial.items()}
    tensors["batch_indices"] = torch.tensor([[0, 1], [2, -1]])
    path = tmp_path / "records.safetensors"
    info = {"format": RECORDS_FORMAT, "num_samples": 3, "steps": steps}
    save_file(tensors, str(path), metadata={"amnesiac": json.dumps(info)})
    forget = torch.tensor([True, False, False])
    removed, _ = load_records(path, model, forget)
    assert set(removed) == set(initial)
    return path, model, forget, tensors, info


def _rewrite_records(path, tensors, info):
    save_file(tensors, str(path), metadata={"amnesiac": info if isinstance(info, str) else json.dumps(info)})


AMNESIAC_CASES = [
    ("truncated", lambda p, t, i: p.write_bytes(p.read_bytes()[:80]), "are corrupt"),
    ("garbage", lambda p, t, i: p.write_bytes(GARBAGE), "are corrupt"),
    ("empty", lambda p, t, i: p.write_bytes(b""), "are corrupt"),
    ("metadata-not-json", lambda p, t, i: _rewrite_records(p, t, "{oops"), "not valid JSON"),
    (
        "num-samples-missing",
        lambda p, t, i: _rewrite_records(p, t, {k: v for k, v in i.items() if k != "num_samples"}),
        "'num_samples'",
    ),
    ("num-samples-a-string", lambda p, t, i: _rewrite_records(p, t, {**i, "num_samples": "3"}), "'num_samples'"),
    (
        "batches-missing",
        lambda p, t, i: _rewrite_records(p, {k: v for k, v in t.items() if k != "batch_indices"}, i),
        "'batch_indices'",
    ),
    ("batches-1d", lambda p, t, i: _rewrite_records(p, {**t, "batch_indices": torch.tensor([0, 1])}, i), "2-D integer"),
    ("batches-float", lambda p, t, i: _rewrite_records(p, {**t, "batch_indices": torch.zeros(2, 2)}, i), "2-D integer"),
    (
        "batches-out-of-range",
        lambda p, t, i: _rewrite_records(p, {**t, "batch_indices": torch.tensor([[0, 9], [1, 2]])}, i),
        "beyond",
    ),
    (
        "initial-missing",
        lambda p, t, i: _rewrite_records(p, {k: v for k, v in t.items() if not k.startswith("initial.")}, i),
        "is missing",
    ),
    (
        "deltas-wrong-steps",
        lambda p, t, i: _rewrite_records(p, {k: (v[:1] if k.startswith("delta.") else v) for k, v in t.items()}, i),
        "updates for 2 batches",
    ),
]


@pytest.mark.parametrize("case, corrupt, phrase", AMNESIAC_CASES, ids=[c[0] for c in AMNESIAC_CASES])
def test_amnesiac_records(records, case, corrupt, phrase):
    path, model, forget, tensors, info = records
    corrupt(path, tensors, info)
    with pytest.raises(ConfigError) as info_:
        load_records(path, model, forget)
    _one_line_naming(info_.value, path, phrase)


# ---------------------------------------------------------------------------------------------------- data files


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


NPZ_CASES = [
    ("object-arrays", lambda p: _npz(p, x=np.array([{"a": 1}] * 8, dtype=object), y=np.zeros(8, int)), "object arrays"),
    (
        "truncated",
        lambda p: p.write_bytes(_npz(p, x=np.zeros((8, 2, 2)), y=np.zeros(8, int)).read_bytes()[:100]),
        "corrupt",
    ),
    ("garbage", lambda p: p.write_bytes(GARBAGE), "corrupt"),
    ("empty", lambda p: p.write_bytes(b""), "corrupt"),
    ("pickle", lambda p: p.write_bytes(pickle.dumps({"x": [1]})), "corrupt"),
    ("missing-array", lambda p: _npz(p, x=np.zeros((8, 2, 2))), "must hold arrays named 'x'"),
    ("strings", lambda p: _npz(p, x=np.array([["a"] * 4] * 8), y=np.zeros(8, int)), "must be numbers"),
    ("wrong-shape", lambda p: _npz(p, x=np.zeros(8), y=np.zeros(8, int)), "images must be (N, C, H, W)"),
]


@pytest.mark.parametrize("case, write, phrase", NPZ_CASES, ids=[c[0] for c in NPZ_CASES])
def test_npz_dataset(tmp_path, case, write, phrase):
    path = tmp_path / "data.npz"
    write(path)
    with pytest.raises(ConfigError) as info:
        load_dataset(str(path))
    assert "\n" not in str(info.value) and str(path) in str(info.value) and phrase in str(info.value), str(info.value)


@pytest.mark.parametrize(
    "name, content, phrase",
    [
        ("idx.txt", GARBAGE, "expected integer indices"),
        ("idx.json", b'{"a": 1', "expected integer indices"),
        ("idx.json", b'["1", "2"]', "expected integer indices"),
        ("idx.npy", GARBAGE, "expected integer indices"),
        ("idx.npy", b"", "expected integer indices"),
        ("idx.txt", b"1 2 2", "duplicate indices"),
    ],
)
def test_index_files(tmp_path, name, content, phrase):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        read_indices(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and phrase in str(info.value)


def test_an_object_array_index_file_is_refused(tmp_path):
    path = tmp_path / "idx.npy"
    np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match="expected integer indices"):
        read_indices(path)
    with pytest.raises(ConfigError, match="is a directory"):
        read_indices(tmp_path)


def test_an_unreadable_image_in_an_image_folder_is_named(tmp_path):
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(3):
            np.save(tmp_path / label / f"{i}.npy", np.zeros(2))  # not images: ignored
    from PIL import Image

    for label in ("a", "b"):
        for i in range(3):
            Image.fromarray(np.zeros((4, 4), dtype=np.uint8)).save(tmp_path / label / f"{i}.png")
    (tmp_path / "b" / "broken.png").write_bytes(GARBAGE)
    with pytest.raises(ConfigError, match=r"broken\.png is not a readable image"):
        load_dataset(str(tmp_path))


# ---------------------------------------------------------------------------------------------------- evaluation metrics

SCORES = {"forget_accuracy": 0.9, "retain_accuracy": 0.9, "frechet_to_real": 1.0}
METRICS = {
    "forget_accuracy": 0.1,
    "retain_accuracy": 0.9,
    "forget": ["seven"],
    "retain": ["one"],
    "original": SCORES,
    "oracle": None,
    "settings": {},
}


@pytest.mark.parametrize(
    "case, content, phrase",
    _json_family(
        METRICS,
        "original",
        "forget",
        "seven",
        extra=[
            ("score-missing", json.dumps({**METRICS, "oracle": {"forget_accuracy": 0.0}}).encode(), "oracle has no"),
            ("accuracy-a-string", json.dumps({**METRICS, "forget_accuracy": "10%"}).encode(), "'forget_accuracy'"),
        ],
    ),
)
def test_evaluation_metrics_read_by_the_erasure_report(tmp_path, case, content, phrase):
    from concept_erase.diffusion.report import summarize_evaluation

    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        summarize_evaluation("x", path)
    _one_line_naming(info.value, path, phrase)
