"""DiStruction (data-free unlearning by structured destruction): the BGD preparation and the method.

- :mod:`~classifiers.distruction.bgd`: the Bayesian-gradient-descent preparation of the original model;
- :mod:`~classifiers.distruction.method`: the registered ``distruction`` method.
"""
