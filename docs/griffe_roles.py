"""A griffe extension for the API reference: orpo's docstrings write reST roles (``:func:`kind_of```,
``:mod:`~orpo.scoring.layouts```); Markdown has none, so each role becomes a plain code span
(`` `kind_of` ``, with ``~`` keeping the last dotted part as Sphinx does).  Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:mod|func|class|meth|attr|data|exc|obj|const|term):`(~?)([^`]+)`")


def _plain(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class ReSTRoles(griffe.Extension):
    """Rewrite reST roles in every docstring griffe reads into Markdown code spans."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_plain, obj.docstring.value)
