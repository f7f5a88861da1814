"""Registries of named things: unlearning/erasure methods and pipeline steps.

A method is a config dataclass plus the code that applies it, registered under a name (as in peft). Registering a
malformed or duplicate name fails; looking up an unknown name fails with the list of registered names. One name may
be registered once per tag family (``salun`` is both a diffusion and a classifier method): lookups then name the tag.

The core never imports the packages that register methods. They announce themselves through the
``concept_erase.plugins`` entry-point group (see ``pyproject.toml``) and are imported on the first lookup, so the
dependency points one way: ``concept_erase.diffusion``, ``classifiers`` and ``pipelines`` depend on
``concept_erase.core``, never the reverse.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from concept_erase.core.config import load_config
from concept_erase.core.errors import RegistryError, UnknownNameError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
PLUGIN_GROUP = "concept_erase.plugins"
# What pyproject.toml announces; used when running from a source tree that was never installed.
BUILTIN_PLUGINS = (
    "concept_erase.diffusion.methods",
    "classifiers.plugin",
    "pipelines.steps",
    "pipelines.diffusion_steps",
)


@dataclass(frozen=True)
class Entry:
    """One registered object: its name, config dataclass, implementation and a one-line description."""

    name: str
    config_cls: type | None
    target: Any
    kind: str
    tags: tuple[str, ...] = ()
    description: str = ""
    outputs: tuple[str, ...] | None = None  # a step's output keys (``None``: not declared, checked only when it runs)

    def make_config(self, values: dict | None = None, overrides: list[str] | None = None):
        """Build this entry's config from a mapping and dotted ``key=value`` overrides (validated)."""

        if self.config_cls is None:
            if values or overrides:
                raise RegistryError(f"{self.kind} {self.name!r} takes no configuration")
            return None
        return load_config(self.config_cls, values or {}, overrides or [])


class Registry:
    """A name -> :class:`Entry` mapping for one kind of thing (``method``, ``step``)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, list[Entry]] = {}

    def register(
        self,
        name: str,
        config_cls: type | None = None,
        *,
        tags: tuple[str, ...] | list[str] = (),
        description: str = "",
        outputs: tuple[str, ...] | list[str] | None = None,
    ) -> Callable[[Any], Any]:
        """Decorator registering a function or class under ``name``; a step declares the keys it may return in
        ``outputs`` (so a pipeline's references to them are checked before anything runs).

        Raises:
            RegistryError: the name is not lowercase ``[a-z][a-z0-9_]*``, is already registered with one of these
                tags (or untagged), or the config class is not a dataclass.
        """
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise RegistryError(
                f"invalid {self.kind} name {name!r}: use lowercase letters, digits and underscores, starting with a letter"
            )
        tags = tuple(tags)
        for other in self._entries.get(name, []):
            if not tags or not other.tags or set(tags) & set(other.tags):
                raise RegistryError(f"{self.kind} {name!r} is already registered")
        if config_cls is not None and not dataclasses.is_dataclass(config_cls):
            raise RegistryError(f"config class of {self.kind} {name!r} must be a dataclass, got {config_cls!r}")
        if outputs is not None:
            outputs = tuple(outputs)
            if not all(isinstance(k, str) and k for k in outputs):
                raise RegistryError(f"outputs of {self.kind} {name!r} must be non-empty strings, got {outputs!r}")

        def decorator(target: Any) -> Any:
            doc = description or (target.__doc__ or "").strip().split("\n")[0]
            self._entries.setdefault(name, []).append(Entry(name, config_cls, target, self.kind, tags, doc, outputs))
            return target

        return decorator

    def unregister(self, name: str, tag: str | None = None) -> None:
        """Remove ``name`` (only its entry tagged ``tag`` when given; for tests and interactive use)."""
        kept = [e for e in self._entries.pop(name, []) if tag is not None and tag not in e.tags]
        if kept:
            self._entries[name] = kept

    def get(self, name: str, tag: str | None = None) -> Entry:
        """The entry called ``name``; with ``tag``, only entries carrying that tag (e.g. ``"diffusion"``) qualify."""
        load_plugins()
        entries = self._entries.get(name, [])
        matches = [e for e in entries if tag is None or tag in e.tags]
        if len(matches) == 1:
            return matches[0]
        if matches:
            families = ", ".join("/".join(e.tags) for e in matches)
            raise UnknownNameError(f"{self.kind} {name!r} is registered for several tags ({families}): name the tag")
        scope = f"{tag} " if tag else ""
        tagged = "/".join(t for e in entries for t in e.tags) or "untagged"
        hint = f" ({name!r} is a {tagged} {self.kind})" if entries else ""
        known = ", ".join(self.names(tag)) or "(none registered)"
        raise UnknownNameError(f"unknown {scope}{self.kind} {name!r}{hint}; registered {scope}{self.kind}s: {known}")

    def names(self, tag: str | None = None) -> list[str]:
        load_plugins()
        return sorted(n for n, es in self._entries.items() if any(tag is None or tag in e.tags for e in es))

    def __contains__(self, name: object) -> bool:
        load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry]:
        load_plugins()
        return iter([e for n in sorted(self._entries) for e in self._entries[n]])


METHODS = Registry("method")
STEPS = Registry("step")

_plugins_loaded = False


def load_plugins() -> None:
    """Import every module announced in the ``concept_erase.plugins`` entry-point group (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    names = {ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    if not names:  # running from a source tree that was never installed
        names = set(BUILTIN_PLUGINS)
    for module in sorted(names):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module.split(".")[0]:
                raise


def register_method(name: str, config_cls: type | None = None, **kwargs: Any) -> Callable[[Any], Any]:
    """Register an unlearning / erasure method. ``tags`` should include ``"classifier"`` or ``"diffusion"``."""
    return METHODS.register(name, config_cls, **kwargs)


def register_step(name: str, config_cls: type | None = None, **kwargs: Any) -> Callable[[Any], Any]:
    """Register a pipeline step ``fn(context, config) -> dict`` usable from ``concept-erase run``."""
    return STEPS.register(name, config_cls, **kwargs)


def get_method(name: str, tag: str | None = None) -> Entry:
    """Look up a method (optionally only among those tagged ``tag``); unknown names raise
    :class:`UnknownNameError` listing the registered ones."""
    return METHODS.get(name, tag)


def get_step(name: str) -> Entry:
    return STEPS.get(name)


def list_methods(tag: str | None = None) -> list[str]:
    return METHODS.names(tag)
