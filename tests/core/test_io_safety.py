"""Outputs never overlap inputs, and every JSON the toolkit writes is strict JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from concept_erase.core.errors import NonFiniteValueError, OutputOverlapsInputError
from concept_erase.core.io import atomic_output_dir, check_disjoint, check_output_dir, write_json
from concept_erase.diffusion.evaluation import frechet_distance


@pytest.fixture
def model_dir(tmp_path):
    model = tmp_path / "runs" / "model"
    model.mkdir(parents=True)
    (model / "model.safetensors").write_bytes(b"weights")
    return model


@pytest.mark.parametrize(
    ("output", "relation"),
    [("runs/model", "is"), ("runs", "contains"), (".", "contains"), ("runs/model/eval", "lies inside")],
)
@pytest.mark.parametrize("overwrite", [False, True])
def test_an_output_that_overlaps_an_input_is_refused_with_or_without_overwrite(
    tmp_path, model_dir, output, relation, overwrite
):
    target = tmp_path / output
    with pytest.raises(OutputOverlapsInputError, match=f"{relation} the input") as info:
        check_output_dir(target, overwrite, inputs=[model_dir])
    assert "\n" not in str(info.value)
    with pytest.raises(OutputOverlapsInputError):
        with atomic_output_dir(
            target, overwrite, inputs=[model_dir]
        ):  # the writer checks too: nothing is created or replaced
            pytest.fail("the body must not run")
    assert (model_dir / "model.safetensors").read_bytes() == b"weights"
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]


def test_links_and_relative_spellings_of_an_input_are_seen_through(tmp_path, model_dir, monkeypatch):
    link = tmp_path / "link"
    link.symlink_to(model_dir)
    monkeypatch.chdir(tmp_path)
    for output in (link, "runs/../runs/model", "./runs/model/"):
        with pytest.raises(OutputOverlapsInputError):
            check_disjoint(output, [model_dir])


def test_siblings_hub_ids_and_missing_inputs_are_not_overlaps(tmp_path, model_dir):
    check_disjoint(tmp_path / "runs" / "model-eval", [model_dir, None, "owner/name", tmp_path / "absent"])
    check_disjoint(tmp_path / "runs" / "mod", [model_dir])  # a prefix of the name is not a parent


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float64("nan"), np.array([1.0, np.inf])])
def test_write_json_refuses_non_finite_numbers_naming_the_key(tmp_path, bad):
    path = tmp_path / "metrics.json"
    with pytest.raises(NonFiniteValueError, match=r"metrics\.json: per_concept\.zero\[1\]"):
        write_json(path, {"ok": 1.0, "per_concept": {"zero": [0.5, bad]}})
    assert not path.exists()


def test_write_json_writes_strict_json(tmp_path):
    path = tmp_path / "run.json"
    write_json(path, {"a": np.float32(0.25), "b": np.array([1, 2]), "c": None, "d": [1e300]})
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict constant {c}")) == {
        "a": 0.25,
        "b": [1, 2],
        "c": None,
        "d": [1e300],
    }


def test_frechet_distance_is_undefined_not_nan_below_two_samples():
    one, many = np.zeros((1, 4)), np.random.default_rng(0).normal(size=(8, 4))
    assert frechet_distance(one, many) is None and frechet_distance(many, one) is None
    assert frechet_distance(many, many) == pytest.approx(0.0, abs=1e-6)


def test_saved_tensor_files_get_the_umask_modes_not_safetensors_0600(tmp_path):
    import os

    import torch

    from concept_erase.core.tensorfile import save_tensors

    previous = os.umask(0o022)
    try:
        path = save_tensors({"w": torch.zeros(3)}, tmp_path / "w.safetensors", {"b": "1", "a": "2"})
        assert path.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert save_tensors({"w": torch.zeros(3)}, tmp_path / "private.safetensors").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(previous)


def test_every_json_file_writer_goes_through_strict_json():
    """Files the toolkit writes as JSON (configs, recipes, trainer states, SISA stores and ledgers, mask metadata)
    are written by ``write_json`` or ``strict_json``: no module calls ``json.dumps`` to write a file."""
    import re
    from pathlib import Path

    from concept_erase.core.io import strict_json

    with pytest.raises(NonFiniteValueError, match=r"cannot write a ledger record: losses\[0\] is nan"):
        strict_json({"losses": [float("nan")]}, "a ledger record")
    root = Path(__file__).resolve().parents[2]
    offenders = []
    for path in [
        *root.glob("concept_erase/**/*.py"),
        *root.glob("classifiers/**/*.py"),
        *root.glob("pipelines/**/*.py"),
    ]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"\w*write\w*\(.*json\.dumps", line):
                offenders.append(f"{path.relative_to(root)}:{number}")
    assert not offenders, f"JSON written without strict_json: {offenders}"
