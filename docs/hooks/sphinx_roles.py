"""mkdocs hook: show the Sphinx markup in vitools' docstrings as plain code, and its maths as maths.

The docstrings are Google style with Sphinx cross-reference roles (``:func:`vitools.fit```,
``:class:`~vitools.targets.Target```), which mkdocstrings renders as the literal role followed by
code. This drops the role and, as Sphinx does for a leading ``~``, keeps the last name of the path.
(Linking them with mkdocs-autorefs is for the full API reference, when every target has a page.)

Maths: ``:math:`x``` becomes inline maths and a ``.. math::`` paragraph display maths, in the form
``pymdownx.arithmatex`` (generic) writes, which ``docs/javascripts/mathjax.js`` typesets. A
``.. math::`` paragraph that Markdown has already rewritten (a ``*`` read as emphasis, say) holds
tags and is left as it is: MathJax could not read it.

Examples: griffe reads only ``Examples:`` (plural) as doctest code; the docstrings' ``Example:``
sections become an admonition whose ``>>>`` lines Markdown reads as three nested block quotes.
Those are shown as a code block of the lines (without the prompts, tags dropped).
"""

from __future__ import annotations

import re

ROLE = re.compile(r":(?:attr|class|data|exc|func|meth|mod|obj):<code>(~?)([^<]*)</code>")
INLINE_MATH = re.compile(r":math:<code>([^<]*)</code>")
DISPLAY_MATH = re.compile(r"<p>\.\. math::\s*([^<]*?)\s*</p>", re.S)
DOCTEST = re.compile(r"(?:<blockquote>\s*){3}(.*?)(?:\s*</blockquote>){3}", re.S)
TAG = re.compile(r"<[^>]+>")


def _plain(match: re.Match) -> str:
    text = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{text}</code>"


def _code(match: re.Match) -> str:
    lines = [line.strip() for line in TAG.sub("\n", match.group(1)).splitlines()]
    return "<pre><code>" + "\n".join(line for line in lines if line) + "</code></pre>"


def on_page_content(html: str, **kwargs) -> str:
    html = DOCTEST.sub(_code, html)
    html = INLINE_MATH.sub(lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', html)
    html = DISPLAY_MATH.sub(lambda m: f'<div class="arithmatex">\\[{m.group(1)}\\]</div>', html)
    return ROLE.sub(_plain, html)
