"""Classifier unlearning: datasets and tasks, models, training, metrics and the methods (one module each).

Built on the shared core in :mod:`concept_erase` (trainer, saliency masks, registry, configs, outputs); the core never
imports this package. Methods are found through the registry::

    from classifiers.methods import unlearn
    unlearn("finetune", model, task, {"epochs": 5})
"""
