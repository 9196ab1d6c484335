"""mkdocs hook: show the Sphinx roles in vitools' docstrings as plain code.

The docstrings are Google style with Sphinx cross-reference roles (``:func:`vitools.fit```,
``:class:`~vitools.targets.Target```), which mkdocstrings renders as the literal role followed by
code. This drops the role and, as Sphinx does for a leading ``~``, keeps the last name of the path.
(Linking them with mkdocs-autorefs is for the full API reference, when every target has a page.)
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:attr|class|data|exc|func|math|meth|mod|obj):<code>(~?)([^<]*)</code>")


def _plain(match: re.Match) -> str:
    text = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{text}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return ROLE.sub(_plain, html)
