"""SISA: sharding strategies, exact deletion (bit-identical to training from scratch), reuse, bad input."""

import numpy as np
import pytest
import sklearn.exceptions
import torch

from classifiers.data import load_dataset
from classifiers.sisa import SISAClassifier, make_shards
from concept_erase.core.errors import ConfigError, NotFittedError, StoreError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _sisa(**kwargs):
    params = dict(model="mlp", n_shards=3, n_slices=3, epochs=1, batch_size=64, show_progress=False)
    return SISAClassifier(**{**params, **kwargs})


@pytest.mark.parametrize("strategy", ["uniform", "label", "kmeans", "distribution"])
def test_every_sample_lands_in_exactly_one_slice(strategy):
    n, rng = 103, np.random.default_rng(0)
    labels, inputs, probs = rng.integers(0, 3, n), rng.random((n, 1, 2, 2)), rng.random(n)
    shards = make_shards(n, 4, 3, strategy, labels=labels, inputs=inputs, probabilities=probs, seed=1)
    flat = [i for shard in shards for part in shard for i in part]
    assert sorted(flat) == list(range(n))  # no leftover dropped, nothing twice
    sizes = [sum(map(len, shard)) for shard in shards]
    assert max(sizes) - min(sizes) <= 1
    for shard in shards:
        assert max(map(len, shard)) - min(map(len, shard)) <= 1
    assert shards == make_shards(n, 4, 3, strategy, labels=labels, inputs=inputs, probabilities=probs, seed=1)


def test_label_strategy_stratifies_and_distribution_groups_likely_deletions():
    labels = np.repeat(np.arange(4), 25)
    for shard in make_shards(100, 5, 2, "label", labels=labels, seed=0):
        counts = np.bincount(labels[[i for part in shard for i in part]], minlength=4)
        assert counts.max() - counts.min() <= 1
    probs = np.zeros(100)
    likely = np.arange(0, 100, 10)
    probs[likely] = 0.9
    shards = make_shards(100, 4, 2, "distribution", probabilities=probs, seed=0)
    hit = [s for s, shard in enumerate(shards) if set(likely) & {i for part in shard for i in part}]
    assert len(hit) == 1  # all ten likely deletions in one shard ...
    assert set(likely) <= set(shards[hit[0]][-1])  # ... and in its last slice


def test_kmeans_strategy_makes_clustered_shards():
    rng = np.random.default_rng(0)
    centres = np.array([0.1, 0.5, 0.9])
    group = np.repeat(np.arange(3), 30)
    inputs = np.clip(centres[group][:, None] + 0.01 * rng.standard_normal((90, 4)), 0, 1)
    shards = make_shards(90, 3, 2, "kmeans", inputs=inputs, seed=0)
    for shard in shards:
        assert len(set(group[[i for part in shard for i in part]])) == 1


def test_unlearn_is_exact_and_reuses_unaffected_checkpoints(digits, tmp_path):
    sisa = _sisa(store=tmp_path / "store", aggregation="weighted").fit(digits)
    before = {k: v.clone() for k, v in sisa.models_[1].state_dict().items()}
    ckpts = sorted(p.name for p in (tmp_path / "store" / "checkpoints").iterdir())
    shards = sisa.shards_
    late = shards[0][2][0]  # slice 2 of shard 0: only that slice retrains
    early = shards[2][0][:2]  # slice 0 of shard 2: the whole shard retrains
    first = sisa.unlearn([late])
    assert first["affected_shards"] == {"0": 2} and first["retrained_slices"] == {"0": [2]}
    second = sisa.unlearn([*early, late])
    assert second["already_deleted"] == [late] and second["retrained_slices"] == {"2": [0, 1, 2]}
    assert second["version"] == 2 and sisa.deleted_ == sorted([late, *early])
    for name, tensor in sisa.models_[1].state_dict().items():  # shard 1 was never touched
        assert torch.equal(tensor, before[name])
    now = {p.name for p in (tmp_path / "store" / "checkpoints").iterdir()}
    assert set(ckpts) <= now and len(now) == len(ckpts) + 1 + 3  # old ones kept, one + three new
    assert not torch.equal(sisa.models_[0].state_dict()["net.1.weight"], _sisa().fit(digits).models_[0].net[1].weight)

    gone = set(sisa.deleted_)
    pruned = [[[i for i in part if i not in gone] for part in shard] for shard in shards]
    scratch = _sisa(aggregation="weighted").fit(digits, shards=pruned)
    for mine, fresh in zip(sisa.models_, scratch.models_):
        for (name, a), b in zip(mine.state_dict().items(), fresh.state_dict().values()):
            assert torch.equal(a, b), name
    assert sisa.shard_sizes_ == scratch.shard_sizes_
    np.testing.assert_array_equal(sisa.predict_proba(digits.test), scratch.predict_proba(digits.test))


def test_estimator_api_aggregations_and_reopen(digits, tmp_path):
    sisa = _sisa(n_shards=2, n_slices=2, epochs=3, store=tmp_path / "s").fit(digits)
    proba = sisa.predict_proba(digits.test)
    assert proba.shape == (len(digits.test), 10) and np.allclose(proba.sum(axis=1), 1)
    assert sisa.score(digits.test) > 0.5 and sisa.get_params()["n_shards"] == 2
    assert np.array_equal(sisa.predict(digits.test.tensors[0]), proba.argmax(axis=1))
    for how in ("mean", "weighted"):
        sisa.set_params(aggregation=how)
        assert np.allclose(sisa.predict_proba(digits.test).sum(axis=1), 1)
    reopened = SISAClassifier.from_store(tmp_path / "s", show_progress=False)
    for a, b in zip(sisa.models_, reopened.models_):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert sisa.as_module()(digits.test.tensors[0][:3]).shape == (3, 10)


def test_not_fitted_error_is_sklearns_too():
    with pytest.raises(NotFittedError, match="not fitted"):
        _sisa().predict(torch.zeros(1, 1, 8, 8))
    with pytest.raises(sklearn.exceptions.NotFittedError):
        _sisa().unlearn([0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_shards": 0}, "n_shards must be between 1 and"),
        ({"n_shards": 2000}, "n_shards must be between 1 and"),
        ({"n_slices": 0}, "n_slices must be between 1 and"),
        ({"n_shards": 600, "n_slices": 3}, "n_slices must be between 1 and the 2 samples"),
        ({"strategy": "random"}, "unknown sharding strategy 'random'; accepted: uniform, label, kmeans"),
        ({"aggregation": "max"}, "unknown aggregation 'max'; accepted: vote, mean, weighted"),
        ({"strategy": "distribution"}, "needs deletion_probabilities"),
        ({"deletion_probabilities": np.ones(5)}, "has 5 values but the training set has 1347"),
        ({"deletion_probabilities": -np.ones(1347)}, "non-negative"),
        ({"epochs": 0}, "epochs and batch_size must be >= 1"),
    ],
)
def test_bad_configuration(digits, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _sisa(**kwargs).fit(digits)


def test_bad_deletions_and_store_mismatch(digits, tmp_path):
    sisa = _sisa(n_shards=2, n_slices=1, store=tmp_path / "s").fit(digits)
    for bad in ([-1], [1347], [5, 99999]):
        with pytest.raises(ConfigError, match="out of range for the 1347 training samples"):
            sisa.unlearn(bad)
    with pytest.raises(ConfigError, match="no indices"):
        sisa.unlearn([])
    with pytest.raises(ConfigError, match="every training sample"):
        sisa.unlearn(range(1347))
    other = load_dataset("digits", seed=1)  # another split: other training data
    with pytest.raises(StoreError, match="made with another dataset"):
        _sisa(n_shards=2, n_slices=1, store=tmp_path / "s").fit(other)
    with pytest.raises(StoreError, match="made with another n_shards"):
        _sisa(n_shards=3, n_slices=1, store=tmp_path / "s").fit(digits)
    with pytest.raises(StoreError, match="made with another recipe"):
        _sisa(n_shards=2, n_slices=1, epochs=2, store=tmp_path / "s").fit(digits)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty and is not a SISA store"):
        _sisa(store=tmp_path / "junk").fit(digits)
