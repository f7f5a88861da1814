"""Griffe extension for the docs build: render the reST bits of the code's docstrings as Markdown.

The docstrings use Google-style sections (``Args:``, ``Raises:``) with reST roles such as
``:func:`erase``` or ``:class:`~concept_erase.core.trainer.Trainer```, and end a paragraph with ``::`` before a
literal block. mkdocstrings renders Markdown, so the roles would show up verbatim. This extension rewrites them in
the loaded docstrings only (the source files are untouched): a role becomes a code span wrapped in an *optional*
cross-reference (a link where the target is rendered in these docs, plain code otherwise, never a warning), and a
trailing ``::`` becomes ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:mod|func|class|meth|attr|data|obj|exc|const|ref|term):`(?P<tilde>~?)(?P<target>[^`<]+?)`"
)
_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)


def _identifier(target: str, obj: griffe.Object) -> str:
    """A dotted path for autorefs: absolute targets as given, short ones looked up from the object outwards."""
    target = target.strip().lstrip(".").removesuffix("()")
    if target.startswith(("concept_erase", "classifiers", "pipelines")):
        return target
    head, _, rest = target.partition(".")
    scope: Any = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        member = getattr(scope, "members", {}).get(head)
        if member is not None:
            path = member.target_path if member.is_alias else member.path  # an imported name: where it is defined
            return f"{path}.{rest}" if rest else path
        scope = scope.parent
    return f"{obj.module.path}.{target}"


def rewrite(text: str, obj: griffe.Object) -> str:
    """The docstring text with reST roles turned into optional cross-references and ``::`` into ``:``."""

    def role(match: re.Match) -> str:
        target = match["target"].strip()
        shown = target.split(".")[-1] if match["tilde"] else target
        identifier = _identifier(target, obj)
        return f'<autoref identifier="{identifier}" optional><code>{shown}</code></autoref>'

    return _LITERAL_BLOCK.sub(":", _ROLE.sub(role, text))


class RstRoles(griffe.Extension):
    """Rewrite every docstring once the object tree is complete."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value, obj)
