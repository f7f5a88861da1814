"""Classifier unlearning methods, one module per method.

A method is a config dataclass plus one function, registered by name with the ``"classifier"`` tag. A method that
trains subclasses :class:`~classifiers.training.UnlearningConfig` (the optimiser and schedule keys, passed to the
training loop by :func:`~classifiers.training.fit_method`) and redeclares only the defaults its paper changes::

    @dataclass
    class FinetuneConfig(UnlearningConfig, MaskOptions):
        epochs: int = 5
        learning_rate: float = 0.01
        ...

    @register_method("finetune", FinetuneConfig, tags=("classifier",))
    def finetune(model, task, config, *, work_dir=None) -> dict: ...

The function changes ``model`` in place so that it forgets ``task.forget`` (an :class:`~classifiers.data.UnlearningTask`)
and returns a JSON-serialisable summary (steps, seconds, trained parameters, mask statistics...). ``work_dir`` is a
persistent directory for checkpoints, kept across failures so that a restarted run can resume.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from classifiers.data import UnlearningTask
from concept_erase.core.registry import Entry, get_method

__all__ = ["TAG", "get_classifier_method", "unlearn"]

TAG = "classifier"


def get_classifier_method(name: str) -> Entry:
    """Look up a method registered with the ``"classifier"`` tag; other names fail listing the accepted ones."""
    return get_method(name, tag=TAG)


def unlearn(
    name: str,
    model: nn.Module,
    task: UnlearningTask,
    config: Any = None,
    *,
    overrides: list[str] | None = None,
    work_dir: str | Path | None = None,
) -> dict:
    """Run the classifier method ``name`` on ``model`` in place. ``config`` may be a config object, a mapping or None
    (defaults), and ``overrides`` dotted ``key=value`` strings."""
    entry = get_classifier_method(name)
    if config is None or isinstance(config, dict):
        config = entry.make_config(config, overrides)
    elif overrides:
        raise TypeError("pass overrides with a mapping config, not with a built config object")
    return entry.target(model, task, config, work_dir=Path(work_dir) if work_dir is not None else None)
