"""DiStruction (data-free unlearning by structured destruction): the BGD preparation and the method.

- :mod:`~classifiers.distruction.bgd`: the Bayesian-gradient-descent preparation of the original model;
- :mod:`~classifiers.distruction.prepare`: that preparation of the original the harness starts from, once;
- :mod:`~classifiers.distruction.method`: the registered ``distruction`` method.
"""
