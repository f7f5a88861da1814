"""Concept erasure for Stable Diffusion.

- :mod:`~concept_erase.diffusion.base`: what every method imports (``ErasureConfig``, ``ErasureRequest``,
  ``ErasureOutcome``, ``concept_data``, ``make_trainer``); it never imports the driver.
- :mod:`~concept_erase.diffusion.erasure`: the driver (``erase``, the artifact writer, ``load_erased``).
- :mod:`~concept_erase.diffusion.methods`: one module per method (``fmn``, ``salun``, ``esd``).
- :mod:`~concept_erase.diffusion.families` (the supported pipeline classes, SD 1.x/2.x and SDXL: their UNet
  conditioning and training targets), :mod:`~concept_erase.diffusion.loading` (pipelines, concepts, adapters), :mod:`~concept_erase.diffusion.attention`
  (cross-attention steering), :mod:`~concept_erase.diffusion.evaluation` (scoring against the original and the
  retrain oracle), :mod:`~concept_erase.diffusion.judge` (the digit classifier that labels generations),
  :mod:`~concept_erase.diffusion.oracle` (the retrain oracle), :mod:`~concept_erase.diffusion.tiny_sd` (the embedded
  tiny model and its recipe), :mod:`~concept_erase.diffusion.report` (the comparison report), ``assets/`` (the
  shipped models).
"""
