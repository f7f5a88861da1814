"""DiStruction's one-off preparation of the original the harness starts from (what ``distruction prepare`` runs)."""

from __future__ import annotations

from classifiers.distruction.bgd import BGDConfig, PreparedPosterior, prepare_model
from classifiers.harness import UnlearnJob, load_splits, original_reference
from classifiers.oracle import Reference

__all__ = ["prepare_original"]


def prepare_original(
    dataset: str,
    model: str,
    *,
    weights: str | None = None,
    seed: int = 0,
    config: BGDConfig | None = None,
    log=None,
) -> tuple[PreparedPosterior, Reference]:
    """BGD-prepare the original model of ``dataset`` / ``model`` once, with its training data.

    The original is the one ``concept-erase unlearn --method distruction`` starts from: ``weights`` (a model directory
    or .safetensors) if given, else the harness's (trained on the whole training split with the default recipe and
    ``seed``, cached). Returns the prepared posterior (save it and pass the directory as ``prepared_path``) and the
    original's reference (its model and training seconds).
    """
    job = UnlearnJob(method="distruction", dataset=dataset, model=model, seed=seed, weights=weights)
    splits = load_splits(job)
    original = original_reference(job, splits, None, job.train_config())
    posterior = prepare_model(original.model, splits.train, config or BGDConfig(seed=seed), log=log)
    return posterior, original
