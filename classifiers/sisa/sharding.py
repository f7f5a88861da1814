"""Splitting a training set into SISA shards and slices.

    shards = make_shards(len(y), n_shards=8, n_slices=4, strategy="label", labels=y, seed=0)
    shards[s][r]  # the training indices of slice r of shard s (a list of ints)

Strategies (:data:`STRATEGIES`):

- ``uniform``: a seeded permutation cut into ``n_shards`` contiguous parts;
- ``label``: stratified; each class's samples (in seeded order) are dealt round-robin, so every shard holds a
  proportional share of every class (within one sample);
- ``kmeans``: "clustering mode": scikit-learn ``KMeans`` (``n_clusters = n_shards``) on the flattened inputs, samples
  ordered cluster by cluster, then cut into contiguous parts: each shard holds whole clusters where sizes allow;
- ``distribution``: distribution-aware (Bourtoule et al.'s adaptive unlearning): samples sorted by their deletion
  probability, most likely first, then cut into contiguous parts, so likely deletions hit few shards; inside a shard
  the likely-deleted samples go to the last slices, so a deletion retrains few slices.

Shard sizes differ by at most one, and so do the slice sizes inside a shard (``np.array_split``): no sample is ever
dropped. Within a shard the order is shuffled with the seed (except ``distribution``), so slices are random subsets.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans

from concept_erase.core.errors import ConfigError

__all__ = ["STRATEGIES", "make_shards", "check_probabilities", "first_slices"]

STRATEGIES = ("uniform", "label", "kmeans", "distribution")


def check_probabilities(probabilities, n: int) -> np.ndarray:
    """Per-sample deletion probabilities as a float64 array; one finite, non-negative value per training sample."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if p.shape[0] != n:
        raise ConfigError(f"deletion_probabilities has {p.shape[0]} values but the training set has {n} samples")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ConfigError("deletion_probabilities must be finite and non-negative")
    return p


def _check_counts(n: int, n_shards: int, n_slices: int) -> None:
    for name, value in (("n_shards", n_shards), ("n_slices", n_slices)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
    if n < 1:
        raise ConfigError("the training set is empty: there is nothing to shard")
    if not 1 <= n_shards <= n:
        raise ConfigError(f"n_shards must be between 1 and the {n} training samples, got {n_shards}")
    smallest = n // n_shards
    if not 1 <= n_slices <= smallest:
        raise ConfigError(
            f"n_slices must be between 1 and the {smallest} samples of the smallest shard "
            f"({n} samples / {n_shards} shards), got {n_slices}"
        )


def _order(strategy: str, n: int, n_shards: int, rng, labels, inputs, probabilities) -> np.ndarray:
    """All indices in the order that is cut into contiguous shards (``label``: dealt round-robin instead)."""
    if strategy == "uniform":
        return rng.permutation(n)
    if strategy == "label":
        if labels is None:
            raise ConfigError("strategy 'label' needs the training labels")
        labels = np.asarray(labels).reshape(-1)
        return np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    if strategy == "kmeans":
        if inputs is None:
            raise ConfigError("strategy 'kmeans' needs the training inputs")

        flat = np.asarray(inputs, dtype=np.float64).reshape(n, -1)
        seed = int(rng.integers(2**31 - 1))
        clusters = KMeans(n_clusters=n_shards, n_init=3, random_state=seed).fit_predict(flat)
        tiebreak = rng.permutation(n)
        return np.lexsort((tiebreak, clusters))  # cluster by cluster, seeded order inside a cluster
    if strategy == "distribution":
        if probabilities is None:
            raise ConfigError("strategy 'distribution' needs deletion_probabilities (one per training sample)")
        p = check_probabilities(probabilities, n)
        tiebreak = rng.permutation(n)
        return np.lexsort((tiebreak, -p))  # most likely to be deleted first
    raise ConfigError(f"unknown sharding strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")


def make_shards(
    n: int,
    n_shards: int,
    n_slices: int,
    strategy: str = "uniform",
    *,
    labels=None,
    inputs=None,
    probabilities=None,
    seed: int = 0,
) -> list[list[list[int]]]:
    """The shard map: ``shards[s][r]`` lists the training indices of slice ``r`` of shard ``s``.

    Raises:
        ConfigError: ``n_shards`` outside ``1..n``, ``n_slices`` outside ``1..`` the smallest shard's size, an unknown
            strategy (the message lists the accepted ones), or deletion probabilities of the wrong length or negative.
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown sharding strategy {strategy!r}; accepted: {', '.join(STRATEGIES)}")
    _check_counts(n, n_shards, n_slices)
    if probabilities is not None:
        probabilities = check_probabilities(probabilities, n)
    rng = np.random.default_rng(seed)
    order = _order(strategy, n, n_shards, rng, labels, inputs, probabilities)
    if strategy == "label":
        shards = [order[s::n_shards] for s in range(n_shards)]  # sizes differ by at most one
    else:
        shards = np.array_split(order, n_shards)
    out = []
    for shard in shards:
        if strategy == "distribution":
            shard = shard[::-1]  # least likely first: likely deletions land in the last slices
        else:
            shard = rng.permutation(shard)
        out.append([[int(i) for i in part] for part in np.array_split(shard, n_slices)])
    return out


def first_slices(shards: list[list[list[int]]], indices) -> dict[int, int]:
    """``{shard: the first slice holding one of indices}`` for the shards that hold any of ``indices`` (indices the
    map does not hold are skipped): what deleting them retrains, from that slice on."""
    where = {i: (s, r) for s, shard in enumerate(shards) for r, part in enumerate(shard) for i in part}
    affected: dict[int, int] = {}
    for s, r in (where[i] for i in indices if i in where):
        affected[s] = min(r, affected.get(s, r))
    return affected
