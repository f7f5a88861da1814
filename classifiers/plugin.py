"""Plugin module (entry point ``concept_erase.plugins``): importing it registers the classifier methods."""

import classifiers.distruction.method  # noqa: F401
import classifiers.methods.amnesiac  # noqa: F401
import classifiers.methods.amnesiac_relabel  # noqa: F401
import classifiers.methods.bad_teacher  # noqa: F401
import classifiers.methods.boundary_expand  # noqa: F401
import classifiers.methods.boundary_shrink  # noqa: F401
import classifiers.methods.deltagrad  # noqa: F401
import classifiers.methods.finetune  # noqa: F401
import classifiers.methods.fisher  # noqa: F401
import classifiers.methods.grad_ascent  # noqa: F401
import classifiers.methods.influence_distillation  # noqa: F401
import classifiers.methods.laplace  # noqa: F401
import classifiers.methods.pru  # noqa: F401
import classifiers.methods.random_label  # noqa: F401
import classifiers.methods.retrain  # noqa: F401
import classifiers.methods.salun  # noqa: F401
import classifiers.methods.ssd  # noqa: F401
import classifiers.methods.unsir  # noqa: F401
import classifiers.unlearnable  # noqa: F401
