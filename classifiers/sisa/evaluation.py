"""A SISA ensemble scored like every other unlearning method: UA/RA/TA/MIA against the retrain oracle."""

from __future__ import annotations

from classifiers.data import DatasetSplits, Scenario, make_task
from classifiers.metrics import unlearning_metrics
from classifiers.oracle import get_oracle
from classifiers.sisa.estimator import SISAClassifier, single_model_epochs
from classifiers.training import TrainConfig

__all__ = ["oracle_metrics"]


def oracle_metrics(
    estimator: SISAClassifier, splits: DatasetSplits, indices: list[int], oracle_epochs: int | None = None
) -> tuple[dict, dict]:
    """The unlearning metrics of ``estimator`` for the deletion set ``indices``, next to the retrain oracle's.

    The oracle is one model of the ensemble's architecture trained on the surviving training data with the ensemble's
    recipe (batch size, learning rate, optimizer, weight decay, seed) for ``oracle_epochs`` epochs, by default the
    single-model budget the slice stages match (:func:`~classifiers.sisa.estimator.single_model_epochs`); it is
    cached like the harness's oracles. Returns ``(metrics, oracle)``: the metrics (with the oracle's under
    ``"oracle"``) and ``{"epochs", "seconds", "cached"}`` of the oracle.
    """
    task = make_task(splits, Scenario("indices", indices=tuple(indices), source="--indices"))
    recipe = estimator.recipe_
    train = TrainConfig(
        epochs=oracle_epochs or single_model_epochs(recipe.epochs, estimator.n_slices),
        batch_size=recipe.batch_size,
        learning_rate=recipe.learning_rate,
        optimizer=recipe.optimizer,
        weight_decay=recipe.weight_decay,
        seed=estimator.seed,
    )
    oracle = get_oracle(task, splits, estimator.template_, train)
    reference = unlearning_metrics(oracle.model, task)
    metrics = unlearning_metrics(estimator.as_module(), task, oracle_metrics=reference)
    return metrics, {"epochs": train.epochs, "seconds": oracle.seconds, "cached": oracle.cached}
