"""SISA (Bourtoule et al., IEEE S&P 2021): sharded, isolated, sliced, aggregated training with exact deletion.

    sisa = SISAClassifier("cnn", n_shards=8, n_slices=4, store="out/sisa").fit(splits)   # splits.train is trained on
    sisa.unlearn([12, 99])      # retrains only the shards holding 12 and 99, from the slice that held them
    sisa.predict(splits.test), sisa.score(splits.test)
    sisa = SISAClassifier.from_store("out/sisa")                                          # reopen later

Each shard model trains incrementally: stage ``r`` starts from stage ``r-1``'s checkpoint and trains ``epochs``
passes over the surviving samples of slices ``0..r``, with a fresh optimizer and a seed derived from
``(seed, shard, r)`` only; initial weights come from ``(seed, shard)``. So after any deletions every shard model is
bit-identical (CPU) to training that shard from scratch on its surviving data with the same slice schedule.

Distribution: under ``torchrun`` / ``accelerate launch`` (``WORLD_SIZE`` > 1) rank ``k`` trains shards ``k, k+W, ...``
with the local loop of :mod:`classifiers.sisa.training` (no DDP) and writes their content-keyed checkpoints into the
shared store; rank 0 holds the store lock and writes the ledger and ``models.json``; every rank ends with the ensemble.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import accuracy_score
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from classifiers.data import DatasetSplits, load_dataset
from classifiers.models import ModelConfig
from classifiers.sisa.aggregation import AGGREGATIONS, Ensemble, aggregate, as_inputs, training_data
from classifiers.sisa.sharding import STRATEGIES, check_probabilities, first_slices, make_shards
from classifiers.sisa.store import SISAStore, build_manifest, fingerprint_tensors
from classifiers.sisa.training import Distribution, SliceRecipe, derive_seed, initial_model, train_stage
from concept_erase.core.errors import ConfigError, NotFittedError, StoreError

__all__ = ["SISAClassifier", "single_model_epochs", "stage_epochs"]

SINGLE_MODEL_EPOCHS = 20  # TrainConfig's default: the epochs of the single model SISA is compared with


def stage_epochs(n_slices: int, total: int = SINGLE_MODEL_EPOCHS) -> int:
    """Epochs per stage so that a shard processes about ``total`` epochs of its data over its ``n_slices`` stages
    (stage ``r`` sees ``r/R`` of it): ``round(2 * total / (R + 1))``, at least 1."""
    return max(1, round(2 * total / (n_slices + 1)))


def single_model_epochs(epochs_per_stage: int, n_slices: int) -> int:
    """The single-model budget that ``epochs_per_stage`` over ``n_slices`` stages matches (inverse of
    :func:`stage_epochs`)."""
    return max(1, round(epochs_per_stage * (n_slices + 1) / 2))


def _is_torch_data(X) -> bool:
    """The inputs SISA always took (kept exactly as before): a tensor, a TensorDataset or DatasetSplits."""
    return isinstance(X, (torch.Tensor, TensorDataset, DatasetSplits))


class SISAClassifier(ClassifierMixin, BaseEstimator):
    """An ensemble of ``n_shards`` models, each trained in ``n_slices`` incremental stages, that deletes exactly.

    ``model`` is ``"auto"`` (``"mlp"`` for a 2-D feature matrix, ``"cnn"`` for images), ``"mlp"`` / ``"cnn"`` /
    ``"vit"``, a :class:`~classifiers.models.ModelConfig`, or any ``nn.Module`` (a template: each shard gets a
    re-initialised copy). ``fit`` takes what a scikit-learn classifier takes, a 2-D array-like ``X`` (N, F) with
    labels ``y`` of any kind (``classes_`` holds them, sorted), or images (N, C, H, W); or, as before, a tensor, a
    TensorDataset or DatasetSplits, whose labels are the integers ``0..num_classes-1`` (``classes_`` is
    ``arange(num_classes)``). ``epochs`` counts passes per stage; None gives
    :func:`stage_epochs` (``round(2 * 20 / (n_slices + 1))``: every shard then processes about the 20 epochs of the
    single-model recipe over its own data, the budget of Bourtoule et al.'s code). ``store`` is a
    directory (created, or reopened when it holds the same data and configuration); None uses a temporary one.
    """

    def __init__(
        self,
        model: str | ModelConfig | nn.Module = "auto",
        n_shards: int = 8,
        n_slices: int = 4,
        strategy: str = "uniform",
        aggregation: str = "vote",
        epochs: int | None = None,
        batch_size: int = 64,
        learning_rate: float = 3e-3,
        optimizer: str = "adamw",
        weight_decay: float = 0.0,
        deletion_probabilities=None,
        seed: int = 0,
        store: str | os.PathLike | None = None,
        device: str = "cpu",
        show_progress: bool | None = None,
    ):
        self.model = model
        self.n_shards = n_shards
        self.n_slices = n_slices
        self.strategy = strategy
        self.aggregation = aggregation
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.weight_decay = weight_decay
        self.deletion_probabilities = deletion_probabilities
        self.seed = seed
        self.store = store
        self.device = device
        self.show_progress = show_progress

    # ------------------------------------------------------------------------------------------------ fit

    def _model_name(self, ndim: int) -> str | ModelConfig | nn.Module:
        if isinstance(self.model, str) and self.model == "auto":
            return "mlp" if ndim == 2 else "cnn"
        return self.model

    def _template(self, num_classes: int, input_shape: tuple[int, ...]) -> ModelConfig | nn.Module:
        model = self._model_name(1 + len(input_shape))
        if isinstance(model, nn.Module):
            return model
        config = ModelConfig(name=model) if isinstance(model, str) else model
        if not isinstance(config, ModelConfig):
            raise ConfigError(
                f"model must be 'auto', a name, a ModelConfig or an nn.Module, got {type(self.model).__name__}"
            )
        if len(input_shape) == 1:  # a feature matrix: the member models see (N, 1, 1, F)
            if config.name != "mlp":
                raise ConfigError(
                    f"model {config.name!r} needs images (N, channels, height, width), got a 2-D feature matrix "
                    "(N, features); use model='mlp' or 'auto'"
                )
            input_shape = (1, 1, *input_shape)
        return replace(config, num_classes=num_classes, input_shape=tuple(input_shape))

    def _member_inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """A feature matrix reshaped to (N, 1, 1, F) for a ModelConfig member (an nn.Module template gets it 2-D)."""
        if inputs.dim() == 2 and not isinstance(self.template_, nn.Module):
            return inputs.reshape(len(inputs), 1, 1, inputs.shape[1])
        return inputs

    def _sklearn_data(self, X, y) -> tuple[torch.Tensor, torch.Tensor, dict, np.ndarray]:
        """Array-likes validated as scikit-learn does (2-D features or N-D images; finite, dense, real, non-empty),
        labels of any kind encoded as indices into ``classes_``."""
        X, y = validate_data(self, X, y, dtype=np.float32, allow_nd=True, ensure_min_samples=1)
        check_classification_targets(y)
        if X.ndim not in (2, 4) and not isinstance(self.model, nn.Module):
            raise ConfigError(f"X must be 2-D (samples, features) or 4-D images (N, C, H, W), got shape {X.shape}")
        classes, encoded = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ConfigError(
                f"{type(self).__name__} needs samples of at least 2 classes in the data, got 1 class ({classes[0]!r})"
            )
        info = {"dataset": "tensors", "split": None, "num_classes": len(classes)}
        inputs = torch.from_numpy(np.array(X, dtype=np.float32, order="C"))
        return inputs, torch.from_numpy(encoded.astype(np.int64).reshape(-1)), info, classes

    def _predict_inputs(self, X) -> torch.Tensor:
        if _is_torch_data(X):
            return self._member_inputs(as_inputs(X))
        X = validate_data(self, X, dtype=np.float32, allow_nd=True, reset=False)
        if tuple(X.shape[1:]) != self.input_shape_:
            raise ConfigError(
                f"X has samples of shape {tuple(X.shape[1:])}, but {type(self).__name__} was fitted on samples of "
                f"shape {self.input_shape_}"
            )
        return self._member_inputs(torch.from_numpy(np.array(X, dtype=np.float32, order="C")))

    def _shard_map(self, shards, labels: torch.Tensor, inputs: torch.Tensor) -> list:
        n = len(labels)
        if shards is None:
            probs = self.deletion_probabilities
            if self.strategy == "distribution" and probs is None:
                raise ConfigError("strategy 'distribution' needs deletion_probabilities (one per training sample)")
            return make_shards(n, self.n_shards, self.n_slices, self.strategy, labels=labels.numpy(),
                               inputs=inputs.numpy() if self.strategy == "kmeans" else None,
                               probabilities=probs, seed=self.seed)  # fmt: skip
        flat = [int(i) for shard in shards for part in shard for i in part]
        if len(shards) != self.n_shards or any(len(shard) != self.n_slices for shard in shards):
            raise ConfigError(f"shards must be {self.n_shards} lists of {self.n_slices} slices (n_shards x n_slices)")
        if len(set(flat)) != len(flat) or any(not 0 <= i < n for i in flat):
            raise ConfigError(f"shards must hold distinct training indices in 0..{n - 1}")
        return [[[int(i) for i in part] for part in shard] for shard in shards]

    def _check_params(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"unknown sharding strategy {self.strategy!r}; accepted: {', '.join(STRATEGIES)}")
        if self.aggregation not in AGGREGATIONS:
            raise ConfigError(f"unknown aggregation {self.aggregation!r}; accepted: {', '.join(AGGREGATIONS)}")

    def fit(self, X, y=None, *, shards: list | None = None) -> SISAClassifier:
        """Train (or reopen and complete) the ensemble on ``X``: DatasetSplits (its training split), a TensorDataset,
        or inputs with labels ``y``. ``shards`` gives an explicit shard map ``shards[s][r] = [indices]``."""
        self._check_params()
        if _is_torch_data(X):
            inputs, labels, info = training_data(X, y)
            classes = np.arange(info["num_classes"])
            if inputs.dim() >= 2:
                self.n_features_in_ = int(inputs.shape[1])
        else:
            inputs, labels, info, classes = self._sklearn_data(X, y)
        self.input_shape_ = tuple(inputs.shape[1:])
        if self.deletion_probabilities is not None:
            check_probabilities(self.deletion_probabilities, len(labels))
        shard_map = self._shard_map(shards, labels, inputs)
        epochs = stage_epochs(self.n_slices) if self.epochs is None else self.epochs
        recipe = SliceRecipe(epochs, self.batch_size, self.learning_rate, self.optimizer, self.weight_decay)
        template = self._template(info["num_classes"], tuple(inputs.shape[1:]))
        self.template_ = template
        inputs = self._member_inputs(inputs)
        params = {k: getattr(self, k) for k in ("n_shards", "n_slices", "strategy", "aggregation", "seed")}
        manifest = build_manifest(info, fingerprint_tensors(inputs, labels), len(labels), template, recipe, params)
        if self.store is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="sisa-store-")
        path = self._tmp.name if self.store is None else self.store
        store, dist = SISAStore(path), Distribution()
        self.inputs_, self.labels_, self.template_, self.recipe_ = inputs, labels, template, recipe
        self.store_, self.shards_, self.n_classes_, self.dist_ = store, shard_map, info["num_classes"], dist
        self.classes_ = classes
        with store.locked(dist.rank == 0):
            if dist.rank == 0:
                store.initialise(manifest, shard_map)
            dist.barrier()
            store.check(manifest)
            self.manifest_ = store.manifest()
            self._bring_up_to_date()
        return self

    @classmethod
    def from_store(cls, store, dataset=None, model: nn.Module | None = None, **params) -> SISAClassifier:
        """Reopen a store; ``dataset`` defaults to the one named in its manifest (reloaded and checked)."""

        opened = SISAStore(store)
        manifest = opened.manifest()
        if dataset is None:
            if manifest["dataset"] == "tensors" or not manifest.get("split"):
                raise ConfigError(f"{store} was trained on in-memory tensors: pass the dataset to from_store")
            try:
                dataset = load_dataset(manifest["dataset"], **manifest["split"])
            except TypeError as exc:  # split keys load_dataset does not take
                raise StoreError(f"{opened.manifest_path} is corrupt: 'split' {exc}") from None
        if model is None:
            if "class" in manifest["model"]:
                raise ConfigError(f"{store} holds a custom nn.Module: pass model= the template to from_store")
            try:
                model = ModelConfig(**{k: v for k, v in manifest["model"].items()})
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{opened.manifest_path} is corrupt: 'model' {str(exc).splitlines()[0]}") from None
        keys = ("n_shards", "n_slices", "strategy", "aggregation", "seed")
        settings = {k: manifest[k] for k in keys} | {k: manifest["recipe"][k] for k in
                                                      ("epochs", "batch_size", "learning_rate", "optimizer",
                                                       "weight_decay")}  # fmt: skip
        estimator = cls(model=model, store=store, **{**settings, **params})
        return estimator.fit(dataset, shards=opened.shards(manifest))

    # ------------------------------------------------------------------------------------------------ training

    def _surviving(self, shard: int, deleted: set[int]) -> list[list[int]]:
        return [[i for i in part if i not in deleted] for part in self.shards_[shard]]

    def _keys(self, shard: int, deleted: set[int]) -> list[str]:
        surviving, fingerprint = self._surviving(shard, deleted), self.store_.config_fingerprint()
        return [self.store_.checkpoint_key(fingerprint, shard, r, surviving[: r + 1]) for r in range(self.n_slices)]

    def _model(self, shard: int, key: str | None) -> nn.Module:
        model = initial_model(self.template_, self.seed, shard).to(self.device)
        if key is not None:
            state = self.store_.load_checkpoint(key)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:  # missing or unexpected tensors, wrong shapes
                detail = str(exc).splitlines()[1 if len(str(exc).splitlines()) > 1 else 0].strip()[:100]
                raise StoreError(
                    f"{self.store_.checkpoint_path(key)} is corrupt: its tensors do not fit shard {shard}'s model "
                    f"({detail})"
                ) from None
        return model.eval()

    def _start(self, shard: int, deleted: set[int]) -> tuple[int, list[str]]:
        """The first stage of ``shard`` to train for ``deleted`` (``n_slices``: none) and the stage keys."""
        keys = self._keys(shard, deleted)
        start = next((r + 1 for r in reversed(range(self.n_slices)) if self.store_.has_checkpoint(keys[r])), 0)
        return start, keys

    def _check_resume_points(self, deleted: set[int]) -> None:
        """Load the checkpoint each shard would resume from for ``deleted`` (a damaged one is refused now, before a
        request is written to the ledger)."""
        for shard in range(self.n_shards):
            start, keys = self._start(shard, deleted)
            if 0 < start < self.n_slices:
                self._model(shard, keys[start - 1])

    def _train_shard(self, shard: int, deleted: set[int]) -> list[int]:
        """Train the stages of ``shard`` whose checkpoint is missing; returns the retrained slice ids."""
        start, keys = self._start(shard, deleted)
        surviving = self._surviving(shard, deleted)
        if start == self.n_slices:
            return []
        model = self._model(shard, keys[start - 1] if start else None)
        for r in range(start, self.n_slices):
            index = torch.tensor([i for part in surviving[: r + 1] for i in part], dtype=torch.long)
            stage_seed = derive_seed(self.seed, shard, r)
            train_stage(model, self.inputs_[index], self.labels_[index], self.recipe_, stage_seed)
            self.store_.save_checkpoint(keys[r], model.state_dict())
        return list(range(start, self.n_slices))

    def _bring_up_to_date(self, track_resumed: bool = True) -> dict[int, list[int]]:
        """Train every missing stage for the ledger's deleted set (resuming an interrupted request), record it, and
        load the ensemble. Called with the store locked."""

        dist, store = self.dist_, self.store_
        records = store.ledger()
        deleted = store.deleted(records)
        models = store.models()  # models.json is written after the ledger: it can lag behind it, never lead it
        if models and (
            models["deleted"] > len(deleted) or models["version"] > sum(r["status"] == "pending" for r in records)
        ):
            raise StoreError(
                f"{store.ledger_path} is corrupt: it records {len(deleted)} deleted samples but models.json records "
                f"{models['deleted']} (lines are missing); the ledger is never rewritten: restore it from a backup"
            )
        mine = [s for s in range(self.n_shards) if s % dist.world == dist.rank]
        show = sys.stderr.isatty() if self.show_progress is None else self.show_progress
        retrained = {}
        resuming = [r["indices"] for r in store.unfinished(records)] if track_resumed else []
        self._resumed = getattr(self, "_resumed", []) + resuming
        for shard in tqdm(mine, desc="sisa shards", disable=not show or not mine):
            slices = self._train_shard(shard, deleted)
            if slices:
                retrained[shard] = slices
        dist.barrier()
        final = [self._keys(s, deleted)[-1] for s in range(self.n_shards)]
        loaded = dict(zip(getattr(self, "model_keys_", []), getattr(self, "models_", [])))  # reuse unchanged shards
        models = [loaded.get(key) or self._model(s, key) for s, key in enumerate(final)]  # checked before any write
        self.deleted_ = sorted(deleted)
        self.version_ = sum(r["status"] == "pending" for r in records)
        self.shard_sizes_ = [sum(len(p) for p in self._surviving(s, deleted)) for s in range(self.n_shards)]
        if dist.rank == 0:
            for record in store.unfinished(records):
                store.append_ledger({"request_id": record["request_id"], "status": "done",
                                     "version": record["version"],
                                     "retrained": {str(k): v for k, v in retrained.items()}})  # fmt: skip
            shards = [{"shard": s, "checkpoint": k, "samples": n} for s, (k, n) in
                      enumerate(zip(final, self.shard_sizes_))]  # fmt: skip
            store.write_models({"version": self.version_, "deleted": len(deleted), "shards": shards})
        dist.barrier()
        self.models_, self.model_keys_ = models, final
        return retrained

    # ------------------------------------------------------------------------------------------------ unlearn

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "models_")

    def _check_fitted(self) -> None:
        if not hasattr(self, "models_"):
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit first")

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        tags.input_tags.three_d_array = False
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        tags.target_tags.required = True
        tags.classifier_tags.multi_class = True
        tags.classifier_tags.multi_label = False
        tags.non_deterministic = self.device != "cpu"  # bit-identical on CPU only
        return tags

    def __getstate__(self) -> dict:
        # a temporary store belongs to the process that made it: a pickled copy keeps the fitted ensemble (predict,
        # predict_proba, score) but not the directory (unlearn then needs a store= directory)
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state.pop("_tmp", None)
        return state

    def _indices(self, indices) -> list[int]:
        values = np.asarray(list(indices) if not isinstance(indices, (np.ndarray, torch.Tensor)) else indices)
        if values.size == 0:
            raise ConfigError("no indices to unlearn: name at least one training index")
        if not np.issubdtype(values.dtype, np.integer):
            raise ConfigError(f"indices must be integers, got {values.dtype}")
        n = len(self.labels_)
        bad = values[(values < 0) | (values >= n)]
        if bad.size:
            raise ConfigError(
                f"indices {bad[:5].tolist()} out of range for the {n} training samples (valid: 0..{n - 1})"
            )
        return sorted({int(i) for i in values.reshape(-1)})

    def unlearn(self, indices) -> dict:
        """Delete training samples ``indices`` exactly: retrain only the shards holding them, from the first slice
        that held one. Returns a summary: request id, new and already-deleted indices, affected shards, retrained
        slices per shard, the resulting model version and the seconds it took."""
        self._check_fitted()
        wanted = self._indices(indices)
        if not self.store_.exists():  # e.g. an unpickled copy of an estimator whose temporary store was removed
            raise StoreError(
                f"the SISA store {self.store_.path} is gone: unlearning needs the store; refit (fit with store=DIR to "
                "keep one)"
            )
        start, store, dist = time.perf_counter(), self.store_, self.dist_
        with store.locked(dist.rank == 0):
            resumed = self._bring_up_to_date()  # finish a request a crashed process left behind
            rerun = wanted in self._resumed  # the interrupted command run again: resuming it was the request
            if rerun:
                self._resumed.remove(wanted)
            if dist.rank == 0 and not rerun:
                records = store.ledger()
                deleted = store.deleted(records)
                new = [i for i in wanted if i not in deleted]
                if len(deleted) + len(new) >= len(self.labels_):
                    raise ConfigError("unlearning these indices would delete every training sample")
                self._check_resume_points(deleted | set(new))
                affected = first_slices(self.shards_, new)
                request_id = 1 + max((r["request_id"] for r in records), default=0)
                version = self.version_ + (1 if new else 0)
                store.append_ledger({"request_id": request_id, "status": "pending" if new else "noop",
                                     "indices": wanted, "new_indices": new,
                                     "already_deleted": [i for i in wanted if i in deleted],
                                     "affected": {str(s): r for s, r in sorted(affected.items())},
                                     "version": version})  # fmt: skip
            dist.barrier()
            retrained = self._bring_up_to_date(track_resumed=False)
            record = [r for r in store.ledger() if r["status"] != "done"][-1]
            if rerun:
                retrained = dict(resumed)
        return {
            "request_id": record["request_id"],
            "noop": record["status"] == "noop",
            "new_indices": record["new_indices"],
            "already_deleted": record["already_deleted"],
            "affected_shards": record["affected"],
            "retrained_slices": {str(k): v for k, v in retrained.items()},
            "version": self.version_,
            "seconds": round(time.perf_counter() - start, 4),
        }

    # ------------------------------------------------------------------------------------------------ predict

    def predict_proba(self, X) -> np.ndarray:
        """Aggregated class probabilities ``(N, n_classes)`` (``aggregation``: vote, mean or weighted)."""
        self._check_fitted()
        inputs = self._predict_inputs(X).to(self.device)
        return aggregate(self.models_, self.shard_sizes_, inputs, self.aggregation).numpy()

    def predict(self, X) -> np.ndarray:
        """The class (from ``classes_``) with the highest aggregated probability."""
        best = self.predict_proba(X).argmax(axis=1)
        return self.classes_[best]

    def score(self, X, y=None, sample_weight=None) -> float:
        """Accuracy on ``X`` (a TensorDataset or DatasetSplits carries its labels; else pass ``y``)."""

        if isinstance(X, DatasetSplits):
            X = X.test
        if y is None and isinstance(X, TensorDataset):
            y = X.tensors[1]
        if y is None:
            raise ConfigError("score needs labels: pass a TensorDataset or y")
        if sample_weight is not None:
            return float(accuracy_score(np.asarray(y), self.predict(X), sample_weight=sample_weight))
        return float((self.predict(X) == np.asarray(y)).mean())

    def as_module(self) -> nn.Module:
        """The ensemble as an ``nn.Module`` returning log-probabilities (for the harness metrics)."""
        self._check_fitted()
        return Ensemble(self.models_, self.shard_sizes_, self.aggregation)

    def shard_accuracy(self, X, y=None) -> list[float | None]:
        """Each shard model's accuracy on ``X`` (None for a shard with no training data left)."""
        self._check_fitted()
        inputs = self._predict_inputs(X).to(self.device)
        y = torch.as_tensor(np.asarray(X.tensors[1] if y is None else y))
        out = []
        for model, size in zip(self.models_, self.shard_sizes_):
            preds = aggregate([model], [1.0], inputs, "mean").argmax(dim=1)
            out.append(float((preds == y).float().mean()) if size else None)
        return out
