"""HTML-only mail as readable text, with the quoted history cut off by structure.

inscriptis lays out lists and tables; before it runs, this module marks each
link's target after its text ("text [url]", left out where the text is the
URL) and removes the quoted history the big clients mark in their HTML:
Gmail's div.gmail_quote, Outlook's div#divRplyFwdMsg and its border-top
header div with everything after them, Apple Mail's blockquote type="cite",
Thunderbird's div.moz-cite-prefix and its blockquote, Yahoo's yahoo_quoted.
Input past MAX_HTML characters is cut first, so the cost is bounded.
"""

from __future__ import annotations

import re

import lxml.html
from inscriptis import Inscriptis
from inscriptis.model.config import ParserConfig
from lxml import etree

MAX_HTML = 1024 * 1024  # characters of HTML converted

_CONFIG = ParserConfig()
_XML_DECLARATION = re.compile(r"^\s*<\?xml[^>]*\?>", re.I)
_TAGS = re.compile(r"<[^>]{0,2000}>")
_LINK_SCHEMES = ("http://", "https://", "ftp://", "mailto:")


def _class(name: str) -> str:
    return f"contains(concat(' ', normalize-space(@class), ' '), ' {name} ')"


# (xpath, whether everything after the match goes too)
_QUOTES = (
    (f"//div[{_class('gmail_quote')}] | //blockquote[{_class('gmail_quote')}]", False),
    ("//div[@id='divRplyFwdMsg'] | //div[@id='x_divRplyFwdMsg']", True),
    ("//div[contains(translate(@style, ' ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),"
     " 'border:none;border-top:solid')]", True),
    ("//blockquote[@type='cite']", False),
    (f"//div[{_class('moz-cite-prefix')}]", False),
    (f"//div[{_class('yahoo_quoted')}]", False),
)


def _tree(html: str):
    html = _XML_DECLARATION.sub("", html, count=1).strip()
    if not html:
        return None
    try:
        return lxml.html.fromstring(html)
    except (etree.ParserError, ValueError):
        return None


def _mark_links(tree) -> None:
    for a in tree.iter("a"):
        href = (a.get("href") or "").strip()
        if not href.lower().startswith(_LINK_SCHEMES):
            continue
        text = " ".join(a.text_content().split())
        target = href[7:] if href.lower().startswith("mailto:") else href
        if not text or _same_target(text, target):
            continue
        a.tail = f" [{target}]" + (a.tail or "")


def _same_target(text: str, target: str) -> bool:
    def norm(s: str) -> str:
        s = s.strip().lower().rstrip("/")
        return re.sub(r"^(?:https?://|ftp://|mailto:)?(?:www\.)?", "", s)

    return norm(text) == norm(target)


def _drop_rest(element) -> None:
    """Remove element and everything after it, up to the body."""
    node = element
    while node is not None and node.tag not in ("body", "html"):
        parent = node.getparent()
        if parent is None:
            break
        for sibling in list(node.itersiblings()):
            parent.remove(sibling)
        node = parent
    _remove(element)


def _remove(element) -> None:
    parent = element.getparent()
    if parent is not None:
        parent.remove(element)  # its tail goes too: text after a quote inside its block is rare


def _strip_quotes(tree) -> bool:
    """Remove quoted history in place; whether anything was removed."""
    removed = False
    for xpath, rest in _QUOTES:
        for element in tree.xpath(xpath):
            if element.getparent() is None and element is not tree:
                continue  # already gone with an ancestor
            if element is tree:
                continue
            if "moz-cite-prefix" in (element.get("class") or ""):
                following = element.getnext()
                if following is not None and following.tag == "blockquote":
                    _remove(following)
            if rest:
                _drop_rest(element)
            else:
                _remove(element)
            removed = True
    return removed


def _render(tree) -> str:
    try:
        return Inscriptis(tree, _CONFIG).get_text().strip()
    except (RecursionError, ValueError, TypeError, AttributeError):
        return _TAGS.sub(" ", etree.tostring(tree, encoding="unicode", method="text")).strip()


def _prepare(html: str, defects: list[str] | None):
    if len(html) > MAX_HTML:
        if defects is not None:
            defects.append(f"HTML body longer than {MAX_HTML} characters; the rest not converted")
        html = html[:MAX_HTML]
    tree = _tree(html)
    if tree is not None:
        _mark_links(tree)
    return html, tree


def html_to_text(html: str, defects: list[str] | None = None) -> str:
    """The whole HTML body as text, quoted history included."""
    html, tree = _prepare(html, defects)
    if tree is None:
        return _TAGS.sub(" ", html).strip()
    return _render(tree)


def html_texts(html: str, defects: list[str] | None = None) -> tuple[str, str | None]:
    """(the whole body as text, the text without quoted history or None when the HTML marks none)."""
    html, tree = _prepare(html, defects)
    if tree is None:
        return _TAGS.sub(" ", html).strip(), None
    full = _render(tree)
    if not _strip_quotes(tree):
        return full, None
    return full, _render(tree)
