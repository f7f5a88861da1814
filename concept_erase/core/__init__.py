"""The shared machinery both sides use: errors, registry, config loading, outputs, trainer, saliency masks, data.

Modules: :mod:`~concept_erase.core.errors` (the error hierarchy), :mod:`~concept_erase.core.registry` (named methods
and pipeline steps), :mod:`~concept_erase.core.config` (dataclass configs from YAML and ``key=value`` overrides),
:mod:`~concept_erase.core.io` (atomic outputs, run records, the cache), :mod:`~concept_erase.core.trainer` (the
Accelerate trainer), :mod:`~concept_erase.core.saliency` (gradient saliency masks),
:mod:`~concept_erase.core.parameters` (selecting parameters by name) and :mod:`~concept_erase.core.digits` (the digit
data sets both the tiny Stable Diffusion and the classifiers train on).

This package imports nothing from the rest of the toolkit (an import-linter contract in ``pyproject.toml`` checks it).
"""
