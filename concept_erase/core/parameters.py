"""Choosing parameters by name pattern or module filter: one rule for the trainer and the saliency mask."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from torch import nn

from concept_erase.core.errors import ConfigError

__all__ = ["Selection", "select_parameters", "unwrap_model"]

# None: every parameter that requires grad; regex pattern(s) searched in parameter names; or a module filter
# ``fn(module_name, module) -> bool`` whose chosen modules contribute their own (non-recursive) parameters.
Selection = str | Iterable[str] | Callable[[str, nn.Module], bool] | None


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module under DistributedDataParallel / torch.compile wrappers (parameter names are taken from it)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def select_parameters(
    model: nn.Module, selection: Selection = None, what: str = "parameters"
) -> dict[str, nn.Parameter]:
    """Named parameters chosen by ``selection`` (see :data:`Selection`); nothing chosen raises :class:`ConfigError`
    naming ``what`` was being selected and a few real parameter names."""
    model = unwrap_model(model)
    named = list(model.named_parameters())
    if selection is None:
        chosen = {n: p for n, p in named if p.requires_grad}
    elif callable(selection):
        chosen = {}
        for mod_name, module in model.named_modules():
            if selection(mod_name, module):
                for p_name, p in module.named_parameters(recurse=False):
                    chosen[f"{mod_name}.{p_name}" if mod_name else p_name] = p
    else:
        patterns = [selection] if isinstance(selection, str) else list(selection)
        try:
            regexes = [re.compile(p) for p in patterns]
        except (re.error, TypeError) as exc:
            raise ConfigError(f"invalid regex pattern in {patterns!r}: {exc}") from None
        chosen = {n: p for n, p in named if any(r.search(n) for r in regexes)}
    if not chosen:
        sample = ", ".join(n for n, _ in named[:5]) or "(the model has no parameters)"
        raise ConfigError(f"no {what} selected by {selection!r}; parameter names look like: {sample}")
    return chosen
