"""Diffusion concept-erasure methods, one module each, registered by name (``fmn``, ``salun``, ``esd``).

Each module holds its config dataclass (a subclass of :class:`concept_erase.erasure.ErasureConfig` with its paper's
defaults) and one function ``erase(request, config) -> ErasureOutcome`` that trains ``request.unet`` in place through
the shared trainer. :func:`concept_erase.erasure.erase` loads the model, calls it and writes the artifact.
"""

import importlib

for _name in ("fmn", "salun", "esd"):
    try:
        importlib.import_module(f"concept_erase.methods.{_name}")
    except ModuleNotFoundError as _exc:  # a method module still being written
        if _exc.name != f"concept_erase.methods.{_name}":
            raise
