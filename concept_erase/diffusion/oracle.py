"""The retrain oracle: the same recipe retrained without the erased concepts' images and prompts.

    path = get_oracle("concept_erase/diffusion/assets/tiny-sd", ["seven"])   # shipped, cached, or trained now and cached

An oracle exists only for a model whose training recipe is known (``tiny_sd_recipe.json``, written by the toolkit's
own training). Oracles are looked up first among the models shipped in ``concept_erase/diffusion/assets`` (the demo's oracle
is there), then in the cache (``$CONCEPT_ERASE_CACHE/oracles/<recipe hash>``), and trained otherwise.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from concept_erase.core.errors import ConfigError
from concept_erase.core.io import atomic_output_dir, cache_dir
from concept_erase.diffusion.tiny_sd import (
    ASSETS,
    RECIPE_FILE,
    TinySDConfig,
    read_recipe,
    recorded_training_seconds,
    save_pipeline,
    train_tiny_sd,
)

__all__ = ["find_oracle", "get_oracle", "oracle_recipe", "resolve_oracle"]


def _recipe_key(recipe: TinySDConfig) -> str:
    return hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def oracle_recipe(model: str | Path, concepts: list[str]) -> TinySDConfig:
    """The recipe of ``model``'s oracle for ``concepts``; a clear error when ``model``'s recipe is unknown."""
    recipe = read_recipe(model) if Path(model).is_dir() else None
    if recipe is None:
        raise ConfigError(
            f"no retrain oracle for {model}: its training recipe is unknown (no {RECIPE_FILE}); an exact oracle "
            "exists only for models trained by the toolkit, such as the embedded tiny Stable Diffusion"
        )
    return recipe.without(concepts)


def find_oracle(model: str | Path, concepts: list[str]) -> Path | None:
    """A shipped or cached oracle of ``model`` for ``concepts``, or None."""

    target = oracle_recipe(model, concepts)
    for candidate in sorted(ASSETS.glob(f"*/{RECIPE_FILE}")):
        if read_recipe(candidate.parent) == target:
            return candidate.parent
    cached = cache_dir() / "oracles" / _recipe_key(target)
    return cached if (cached / RECIPE_FILE).is_file() else None


def get_oracle(model: str | Path, concepts: list[str], train: bool = True, show_progress: bool = True) -> Path:
    """The oracle's pipeline directory, training it (and caching it) when it is neither shipped nor cached."""

    found = find_oracle(model, concepts)
    if found is not None:
        return found
    recipe = oracle_recipe(model, concepts)
    if not train:
        raise ConfigError(f"no shipped or cached oracle without {', '.join(recipe.exclude_concepts)}")
    target = cache_dir() / "oracles" / _recipe_key(recipe)
    print(
        f"training the retrain oracle without {', '.join(recipe.exclude_concepts)} "
        f"({recipe.vae_steps} autoencoder + {recipe.unet_steps} UNet steps{_estimate(model)}; "
        f"cached in {target} afterwards, so this happens once)",
        flush=True,
    )
    start = time.perf_counter()
    with atomic_output_dir(target, overwrite=True) as tmp:
        save_pipeline(train_tiny_sd(recipe, show_progress=show_progress), tmp)
    print(f"trained the retrain oracle in {time.perf_counter() - start:,.0f} s: {target}", flush=True)
    return target


def _estimate(model: str | Path) -> str:
    """``", about N min ..."`` from the shortest training time recorded for this recipe: the original's, or a shipped
    or cached oracle's (the same steps on fewer images; an oracle trained on a less loaded machine says more about
    this one than an original trained beside other jobs), or ``""`` when none was recorded."""
    runs = _recorded_runs(model)
    if not runs:
        return ""
    seconds, who = min(runs)
    return f", about {max(1, round(seconds / 60))} min: {who} took {seconds:,.0f} s where it was trained"


def _recorded_runs(model: str | Path) -> list[tuple[float, str]]:
    """``(seconds, who)`` of every recorded training of ``model``'s recipe: the original, and the shipped and cached
    oracles whose recipe is the original's without some concepts."""
    base = read_recipe(model)
    runs = []
    original = recorded_training_seconds(model)
    if original is not None:
        runs.append((original, "the original"))
    for recipe_file in [
        *sorted(ASSETS.glob(f"*/{RECIPE_FILE}")),
        *sorted(cache_dir().glob(f"oracles/*/{RECIPE_FILE}")),
    ]:
        try:
            recipe = read_recipe(recipe_file.parent)
            seconds = recorded_training_seconds(recipe_file.parent)
        except ConfigError:  # an unreadable record is no estimate
            continue
        if recipe is None or seconds is None or not recipe.exclude_concepts:
            continue
        if base.without(recipe.exclude_concepts) == recipe:
            runs.append((seconds, f"the oracle without {', '.join(recipe.exclude_concepts)}"))
    return runs


def resolve_oracle(model: str | Path, concepts: list[str], oracle: str | Path | None) -> tuple[Path | None, str]:
    """``(oracle directory or None, a note saying where it came from)`` for the evaluation harness."""
    if oracle is None or str(oracle) == "none":
        return None, "skipped (oracle=none)"
    if str(oracle) != "auto":
        return Path(oracle), f"given: {oracle}"
    if not concepts:
        return Path(model), "nothing is forgotten, so the oracle is the original model"
    try:
        path = get_oracle(model, concepts)
    except ConfigError as exc:
        return None, str(exc)
    return path, f"retrained without {', '.join(sorted(set(concepts)))}: {path}"
