"""MkDocs hooks: what did not render fails a strict build.

MkDocs itself warns on links to missing pages and anchors (``validation`` in mkdocs.yml). Markdown
that silently stays text is caught here, on each page's HTML outside code: a reference-style link
whose reference is not defined (``[text][ref]``), link syntax left as text, an attribute list
(``{#anchor}``) or an admonition (``!!! note``) that was not consumed. Each is a warning, and
``mkdocs build --strict`` (CI) fails on warnings.
"""

from __future__ import annotations

import logging
import re
from typing import Any

# Under "mkdocs.": the logger whose warnings --strict counts.
log = logging.getLogger("mkdocs.hooks.rdad")

_CODE = re.compile(r"<(pre|code)\b[^>]*>.*?</\1>", re.S)
_TAGS = re.compile(r"<[^>]+>")
# Looked for in the page's text (tags and code removed)...
LEFTOVERS = {
    "undefined reference": re.compile(r"\[[^\]\n]+\]\[[^\]\n]*\]"),
    "unrendered link": re.compile(r"\[[^\]\n]+\]\((?:[^)\s]+)\)"),
    "unrendered attribute list": re.compile(r"\{:?\s*[#.][\w-]+[^}\n]*\}"),
}
# ... and in its HTML: an admonition the extension did not take stays a paragraph.
HTML_LEFTOVERS = {"unrendered admonition": re.compile(r"<p>\s*(?:!!!|\?\?\?)\s")}


def unrendered(html: str) -> list[tuple[str, str]]:
    """(kind, text) of every piece of Markdown syntax left in rendered HTML outside code."""
    html = _CODE.sub("", html)
    text = _TAGS.sub("", html)
    found = [(kind, m.group(0)) for kind, rx in LEFTOVERS.items() for m in rx.finditer(text)]
    return found + [(k, m.group(0)) for k, rx in HTML_LEFTOVERS.items() for m in rx.finditer(html)]


def on_page_content(html: str, page: Any, **_: Any) -> str:
    for kind, text in unrendered(html):
        log.warning("%s: %s in %s", kind, text, page.file.src_uri)
    return html
