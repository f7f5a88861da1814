"""Error hierarchy.

Every error the toolkit raises on purpose derives from :class:`ConceptEraseError` *and* from the builtin that
describes it (``ValueError``, ``FileNotFoundError``, ...), so ``except ValueError`` keeps working for callers who do
not know our classes. Messages are one line, name the problem and, where there is a closed set, the accepted values.
The CLI prints ``str(error)`` on stderr and exits with status 2.
"""

from __future__ import annotations

import reprlib
from typing import Any

from sklearn.exceptions import NotFittedError as _SklearnNotFittedError


def excerpt(value: Any, limit: int = 80, quote: bool = True) -> str:
    """A short ``repr`` of user input for an error message: nested and long values are cut (``reprlib``: the head
    and the tail of a long string, the first items of a long list, three levels of nesting), and the result never
    exceeds ``limit`` characters, so a message cannot grow with the input (a huge or deeply aliased YAML value, a
    multi-megabyte string). ``quote=False``: a string as it is (a path in a message), cut the same way."""
    short = reprlib.Repr()
    short.maxlevel = 3
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = short.maxfrozenset = short.maxdeque = 6
    short.maxstring = short.maxother = max(limit - 4, 12)
    short.maxlong = min(limit, 40)
    if not quote and isinstance(value, str):
        if len(value) <= limit:
            return value
        keep = max(limit - 3, 2)
        return value[: (keep + 1) // 2] + "..." + value[len(value) - keep // 2 :]
    text = short.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ConceptEraseError(Exception):
    """Base class of every error raised on purpose by concept-erase."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class ConfigError(ConceptEraseError, ValueError):
    """A configuration value is malformed, has the wrong type or is out of range."""


class UnknownConfigKeyError(ConfigError, KeyError):
    """A configuration names a key the config class does not have."""


class ConfigParseError(ConfigError):
    """A configuration file is not valid YAML or not a mapping."""


class InputNotFoundError(ConfigError, FileNotFoundError):
    """A model directory, data file or other input named by the user does not exist."""


class RegistryError(ConceptEraseError, ValueError):
    """A name cannot be registered (bad format or already taken)."""


class UnknownNameError(ConceptEraseError, KeyError):
    """A registry lookup used a name nobody registered."""


class MaskError(ConceptEraseError, ValueError):
    """A saliency mask is invalid or does not fit the model it is applied to."""


class EmptyDataError(ConceptEraseError, ValueError):
    """A data loader or dataset that must contain data is empty."""


class CheckpointError(ConceptEraseError, ValueError):
    """A checkpoint directory is corrupt or incomplete."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint to resume from does not exist."""


class OutputExistsError(ConceptEraseError, FileExistsError):
    """An output directory already exists and is not empty (pass ``overwrite`` to replace it)."""


class OutputOverlapsInputError(ConceptEraseError, ValueError):
    """An output path equals, contains or lies inside one of the inputs (writing it would destroy that input)."""


class NonFiniteValueError(ConceptEraseError, ValueError):
    """A number that must be finite is NaN or infinite (in a setting, or in a result about to be written as JSON)."""


class NonFiniteConfigError(ConfigError, NonFiniteValueError):
    """A setting that must be a finite number is NaN or infinite."""


class PipelineError(ConceptEraseError, RuntimeError):
    """A pipeline config is invalid or one of its steps failed."""


class ModelLoadError(ConceptEraseError, ValueError):
    """A model path or hub id is not a loadable pipeline of the expected kind, or misses a component."""


class AdapterError(ConceptEraseError, ValueError):
    """An erasure adapter (LoRA or weight delta) is malformed or does not match the model it is applied to."""


class TrainingError(ConceptEraseError, RuntimeError):
    """Training diverged (a NaN or infinite loss) or cannot proceed."""


class NotFittedError(ConceptEraseError, _SklearnNotFittedError):
    """An estimator was used before ``fit``."""


class StoreError(ConceptEraseError, ValueError):
    """A persistent store (the SISA store) is corrupt, or belongs to other data or another configuration."""
