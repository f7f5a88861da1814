"""SISA exact unlearning (Bourtoule et al., IEEE S&P 2021): sharded, isolated, sliced, aggregated training.

    from classifiers.sisa import SISAClassifier
    sisa = SISAClassifier("cnn", n_shards=8, n_slices=4, store="out/sisa").fit(load_dataset("mnist5k"))
    sisa.unlearn([12, 99])

Modules: :mod:`~classifiers.sisa.sharding` (shard/slice strategies), :mod:`~classifiers.sisa.training` (the local
per-stage loop), :mod:`~classifiers.sisa.store` (the persistent store and deletion ledger),
:mod:`~classifiers.sisa.aggregation`, :mod:`~classifiers.sisa.estimator` and :mod:`~classifiers.sisa.evaluation`
(UA/RA/TA/MIA against the retrain oracle). The command line is ``concept-erase sisa`` (:mod:`pipelines.cli.sisa`).
"""

from classifiers.sisa.aggregation import AGGREGATIONS
from classifiers.sisa.estimator import SISAClassifier
from classifiers.sisa.sharding import STRATEGIES, make_shards
from classifiers.sisa.store import SISAStore

__all__ = ["AGGREGATIONS", "STRATEGIES", "SISAClassifier", "SISAStore", "make_shards"]
