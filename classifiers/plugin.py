"""Plugin module (entry point ``concept_erase.plugins``): importing it registers the classifier methods."""

import classifiers.methods.finetune  # noqa: F401
