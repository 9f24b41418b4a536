"""Spell-checking a rep's reply before it reaches the customer.

Only the rep's own prose is checked: quoted lines, code, URLs, addresses,
names and the configured product words are left alone, so a report lists
words a rep would actually want to fix. This module only finds suspects; it
never changes the text and never decides whether a reply is held.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache, cache

from spellchecker import SpellChecker

SUPPORTED = ("ar", "de", "en", "es", "eu", "fa", "fr", "it", "lv", "nl", "pt", "ru")
MAX_SUGGESTIONS = 5

# Searching two edits away costs 0.1-1 s per word, so each check does it for a
# bounded number of words of bounded length; one edit away is always searched.
_DEEP_MAX_LENGTH = 12
_DEEP_SEARCHES = 5

_FENCE = re.compile(r"[ \t]*(?:```|~~~)")
_INLINE_CODE = re.compile(r"``[^\n]*?``|`[^`\n]*`")
_LIST_MARKER = re.compile(r"[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+")
_TOKEN = re.compile(r"\w+(?:['\u2019]\w+)*")
_NOT_PROSE = re.compile(r"://|^www\.|\w\.\w|[@/\\=<>{}|~^$]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?][\"'\u2019\u201d)\]]*$")
_LINE_END_BREAK = re.compile(r"[.!?:;,][\"'\u2019\u201d)\]]*$")


@dataclass(frozen=True)
class Suspect:
    word: str  # as written in the reply
    suggestions: tuple[str, ...]  # best first, at most MAX_SUGGESTIONS


def primary_language(language: str) -> str:
    """The dictionary for a language tag ("de", "de-AT", "pt_BR"); ValueError when there is none."""
    code = re.split(r"[-_]", language.strip().lower(), maxsplit=1)[0]
    if code not in SUPPORTED:
        raise ValueError(f"no spelling dictionary for language {language!r}; supported: {', '.join(SUPPORTED)}")
    return code


@cache
def _dictionary(code: str) -> SpellChecker:
    """Loaded once per language per process: the load is the slow part."""
    return SpellChecker(language=code)


def _prose_lines(text: str) -> Iterator[str | None]:
    """The lines to check; None stands for a break (blank, quoted or code line)."""
    fenced = False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            yield None
        elif fenced or not line.strip() or line.lstrip().startswith(">") or line.startswith(("    ", "\t")):
            yield None
        else:
            yield _INLINE_CODE.sub(" ", line)


def _words(text: str) -> Iterator[tuple[str, bool]]:
    """Each prose word with whether it starts a sentence (where a capital says nothing)."""
    at_start = True
    for line in _prose_lines(text):
        if line is None:
            at_start = True
            continue
        marker = _LIST_MARKER.match(line)
        if marker:
            line, at_start = line[marker.end() :], True
        for chunk in line.split():
            if not _NOT_PROSE.search(chunk):
                for i, m in enumerate(_TOKEN.finditer(chunk)):
                    yield m.group(0), at_start and i == 0
            at_start = bool(_SENTENCE_END.search(chunk))
        if _LINE_END_BREAK.search(line.rstrip()):
            at_start = True


def _checkable(word: str, at_start: bool) -> bool:
    """False for what is not a dictionary word: short, digits, ALL-CAPS, CamelCase, names."""
    if len(word) < 3 or any(c.isdigit() or c == "_" for c in word):
        return False
    if word.isupper() or any(c.isupper() for c in word[1:]):
        return False
    return at_start or not word[0].isupper()


def _case_like(word: str, suggestion: str) -> str:
    return suggestion[:1].upper() + suggestion[1:] if word[:1].isupper() else suggestion


@lru_cache(maxsize=4096)
def _suggestions(code: str, key: str, deep: bool) -> tuple[str, ...]:
    checker = _dictionary(code)
    found = checker.known(checker.edit_distance_1(key))
    if not found and deep:
        found = checker.candidates(key) or set()
    ranked = sorted(found - {key}, key=lambda w: (-checker.word_usage_frequency(w), w))
    return tuple(ranked[:MAX_SUGGESTIONS])


class Speller:
    """A spell checker for one language plus the configured product and company names."""

    def __init__(self, language: str = "en", words: Iterable[str] = ()) -> None:
        self.language = primary_language(language)
        self._checker = _dictionary(self.language)
        self._custom = frozenset(w.lower() for phrase in words for w in _TOKEN.findall(phrase.replace("\u2019", "'")))

    def _known(self, key: str) -> bool:
        if key in self._custom or self._checker.known([key]):
            return True
        # Possessives, elisions and contractions: Acme's, l'ordinateur, rock'n'roll.
        return "'" in key and all(len(part) <= 2 or self._known(part) for part in key.split("'"))

    def check(self, text: str) -> tuple[Suspect, ...]:
        """Each misspelled word once, in order of appearance, with suggestions."""
        suspects: dict[str, Suspect] = {}
        deep_left = _DEEP_SEARCHES
        for word, at_start in _words(text):
            key = word.lower().replace("\u2019", "'")
            if key in suspects or not _checkable(word, at_start) or self._known(key):
                continue
            deep = deep_left > 0 and len(key) <= _DEEP_MAX_LENGTH
            deep_left -= deep
            found = _suggestions(self.language, key, deep)
            suspects[key] = Suspect(word, tuple(_case_like(word, s) for s in found))
        return tuple(suspects.values())


def report(suspects: Iterable[Suspect]) -> str:
    """A plain-text listing for the mail to the rep, one word per line."""
    lines = []
    for s in suspects:
        hint = ", ".join(s.suggestions) if s.suggestions else "(no suggestions)"
        lines.append(f"{s.word} -> {hint}")
    return "\n".join(lines)
