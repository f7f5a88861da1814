"""Diffusion concept-erasure methods, one module each, registered by name (``fmn``, ``salun``, ``esd``, ``uce``,
``rece``).

Each module holds its config dataclass (a subclass of :class:`concept_erase.diffusion.base.ErasureConfig` with its paper's
defaults) and one function ``erase(request, config) -> ErasureOutcome`` that trains ``request.unet`` in place through
the shared trainer (``uce`` and ``rece`` edit it in closed form, without training). :func:`concept_erase.diffusion.erasure.erase`
loads the model, calls it and writes the artifact.
"""

from concept_erase.diffusion.methods import esd, fmn, rece, salun, uce  # noqa: F401  (importing registers them)
