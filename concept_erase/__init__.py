"""concept-erase: make trained models forget.

The core package holds the machinery shared by the diffusion and the classifier side: the Accelerate trainer, the
saliency-mask utility, the registry, the config loader, output handling and the error hierarchy.
"""

__version__ = "0.1.0"

from concept_erase.errors import (  # noqa: E402
    AdapterError,
    CheckpointError,
    CheckpointNotFoundError,
    ConceptEraseError,
    ConfigError,
    ConfigParseError,
    EmptyDataError,
    InputNotFoundError,
    MaskError,
    ModelLoadError,
    NotFittedError,
    OutputExistsError,
    PipelineError,
    RegistryError,
    TrainingError,
    UnknownConfigKeyError,
    UnknownNameError,
)

__all__ = [
    "__version__",
    "AdapterError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "ConceptEraseError",
    "ConfigError",
    "ConfigParseError",
    "EmptyDataError",
    "InputNotFoundError",
    "MaskError",
    "ModelLoadError",
    "NotFittedError",
    "OutputExistsError",
    "PipelineError",
    "RegistryError",
    "TrainingError",
    "UnknownConfigKeyError",
    "UnknownNameError",
]
