"""Document quality filters: an ordered list in the recipe (``quality.filters``), each a name and
its parameters. A filter looks at one document's text and returns None (keep) or the heuristic
that rejected it (``"mean_word_length"``); the first filter that rejects a document is the one
it is counted against.

Why not datatrove's filters: its Gopher filters split words with NLTK's punkt tokenizer, whose
model NLTK downloads at run time (and datatrove brings huggingface-hub, loguru and multiprocess
with it). These follow the Gopher paper (Rae et al. 2021, appendix A) and datatrove's
`GopherQualityFilter` / `GopherRepetitionFilter` thresholds, with whitespace words. Language
identification uses py3langid, which ships its model in the wheel (numpy only, no download).
Every filter is a pure function of the text, so verdicts agree on every machine and rerun.
"""

from __future__ import annotations

import re
import string
import sys
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from itertools import compress, count, islice, repeat
from operator import not_
from typing import Any

import numpy as np

Verdict = str | None  # None: keep; otherwise the heuristic that rejected the document
Filter = Callable[[str], Verdict]


class Text:
    """A document and what several filters read from it, computed once per document: the
    chain's filters share one whitespace split instead of each splitting the text again."""

    __slots__ = ("_words", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self._words: list[str] | None = None

    @property
    def words(self) -> list[str]:
        if self._words is None:
            self._words = self.text.split()
        return self._words


Check = Callable[[Text], Verdict]

# Defaults follow datatrove's Gopher filters (which follow the Gopher paper).
DEFAULTS: dict[str, dict[str, Any]] = {
    "length": {"min_bytes": 0, "max_bytes": -1, "min_words": 0, "max_words": -1},
    "gopher_quality": {
        "min_words": 50,
        "max_words": 100_000,
        "min_mean_word_length": 3.0,
        "max_mean_word_length": 10.0,
        "max_symbol_word_ratio": 0.1,  # "#" and "..." per word
        "max_bullet_lines_ratio": 0.9,
        "max_ellipsis_lines_ratio": 0.3,
        "max_non_alpha_words_ratio": 0.8,  # at least this share of words has a letter
        "min_stop_words": 2,
    },
    "gopher_repetition": {
        "dup_line_frac": 0.3,
        "dup_para_frac": 0.3,
        "dup_line_char_frac": 0.2,
        "dup_para_char_frac": 0.2,
        "top_2gram_frac": 0.2,
        "top_3gram_frac": 0.18,
        "top_4gram_frac": 0.16,
        "dup_5gram_frac": 0.15,
        "dup_6gram_frac": 0.14,
        "dup_7gram_frac": 0.13,
        "dup_8gram_frac": 0.12,
        "dup_9gram_frac": 0.11,
        "dup_10gram_frac": 0.10,
    },
    "language": {"languages": ["en"], "min_score": 0.65, "max_chars": 10_000},
}

STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])  # Gopher's
# Bullets: "•", "●", "○", "■", "□", "▪", "▫", en dash, hyphen, "*", "·", "‣", hyphen bullet, "◦".
BULLETS = tuple("\u2022\u25cf\u25cb\u25a0\u25a1\u25aa\u25ab\u2013-*\u00b7\u2023\u2043\u25e6")
ELLIPSES = ("...", "…")
_PUNCT = (
    string.punctuation + "\u2026\u201c\u201d\u2018\u2019\u00ab\u00bb\u2013\u2014"
)  # ellipsis, curly quotes, guillemets, dashes
_PARAGRAPH = re.compile(r"\n{2,}")
_LINE = re.compile(r"\n+")
# A whitespace-separated word with a letter; linear (a lookahead from each word start only).
_ALPHA_WORD = re.compile(r"(?<!\S)(?=\S*?[^\W\d_])\S+")
# The same count in C passes: delete every ASCII byte that is neither a letter nor whitespace
# and count the words left (the separators \x1c-\x1f, whitespace to str.split but not to
# bytes.split, become spaces first). ASCII words left have a letter; a word left with other
# bytes is decoded and searched. Text with whitespace beyond ASCII (which bytes.split does not
# split on) takes the regex.
_ASCII_SPACE = bytes(range(0x1C, 0x20))
_ASCII_TO_SPACE = bytes.maketrans(_ASCII_SPACE, b" " * len(_ASCII_SPACE))
_ASCII_NOT_LETTER = bytes(c for c in range(128) if not (chr(c).isalpha() or chr(c).isspace()))
_WIDE_SPACE = re.compile(
    "[" + "".join(chr(c) for c in range(0x80, sys.maxunicode + 1) if chr(c).isspace()) + "]"
)
_LETTER = re.compile(r"[^\W\d_]")


def alpha_words(text: str) -> int:
    """Whitespace-separated words of ``text`` with at least one letter."""
    ascii_text = text.isascii()
    if not ascii_text and _WIDE_SPACE.search(text):
        return len(_ALPHA_WORD.findall(text))
    left = text.encode("utf-8").translate(_ASCII_TO_SPACE, _ASCII_NOT_LETTER).split()
    if ascii_text:
        return len(left)
    wide = list(compress(left, map(not_, map(bytes.isascii, left))))
    return len(left) - len(wide) + sum(1 for w in wide if _LETTER.search(w.decode("utf-8")))


def check_params(name: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError naming an unknown filter, an unknown parameter or a wrong type."""
    if name not in DEFAULTS:
        raise ValueError(f"unknown filter {name!r}; known: {', '.join(sorted(DEFAULTS))}")
    known = DEFAULTS[name]
    for key, value in params.items():
        if key not in known:
            raise ValueError(
                f"filter {name!r} has no parameter {key!r}; it has: {', '.join(sorted(known))}"
            )
        default = known[key]
        if isinstance(default, list):
            ok = bool(value) and isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok:
            raise ValueError(f"filter {name!r}: {key} must be like {default!r}, got {value!r}")


def build_filter(name: str, params: Mapping[str, Any]) -> Filter:
    """The filter ``name`` with ``params`` over its defaults, as a function of the text."""
    check = build_check(name, params)
    return lambda text: check(Text(text))


def build_check(name: str, params: Mapping[str, Any]) -> Check:
    """The filter ``name`` with ``params`` over its defaults, as a function of a `Text`."""
    check_params(name, params)
    p = {**DEFAULTS[name], **params}
    if name == "length":
        return _length(p)
    if name == "gopher_quality":
        return _gopher_quality(p)
    if name == "gopher_repetition":
        return _gopher_repetition(p)
    return _language(p)


class FilterChain:
    """The recipe's filters in order; `reject` gives (index, name, heuristic) of the first that
    rejects a document, or None."""

    def __init__(self, specs: Sequence[tuple[str, Mapping[str, Any]]]) -> None:
        self.names = [name for name, _ in specs]
        self.filters = [build_check(name, params) for name, params in specs]

    def reject(self, text: str) -> tuple[int, str] | None:
        doc = Text(text)
        for index, check in enumerate(self.filters):
            verdict = check(doc)
            if verdict is not None:
                return index, verdict
        return None


# -- filters ------------------------------------------------------------------------------
def _length(p: dict[str, Any]) -> Check:
    min_bytes, max_bytes, min_words, max_words = (
        p["min_bytes"],
        p["max_bytes"],
        p["min_words"],
        p["max_words"],
    )
    count_words = min_words > 0 or max_words >= 0

    def check(doc: Text) -> Verdict:
        if min_bytes or max_bytes >= 0:
            n = len(doc.text.encode("utf-8"))
            if n < min_bytes:
                return "min_bytes"
            if 0 <= max_bytes < n:
                return "max_bytes"
        if count_words:
            words = len(doc.words)
            if words < min_words:
                return "min_words"
            if 0 <= max_words < words:
                return "max_words"
        return None

    return check


def _gopher_quality(p: dict[str, Any]) -> Check:
    # Per-word work through C-level map/regex calls: this runs over every word of the corpus.
    min_stop_words = p["min_stop_words"]

    def check(doc: Text) -> Verdict:
        text, words = doc.text, doc.words
        n = len(words)
        if n < p["min_words"]:
            return "min_words"
        if n > p["max_words"]:
            return "max_words"
        stripped = list(map(str.strip, words, repeat(_PUNCT)))
        content = n - stripped.count("")  # punctuation-only tokens are no words
        mean = sum(map(len, stripped)) / content if content else 0.0
        if mean < p["min_mean_word_length"]:
            return "min_mean_word_length"
        if mean > p["max_mean_word_length"]:
            return "max_mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("\u2026")
        if symbols / n > p["max_symbol_word_ratio"]:
            return "symbol_word_ratio"
        lines = text.splitlines()
        if lines:
            bullets = sum(1 for line in lines if line.lstrip().startswith(BULLETS))
            if bullets / len(lines) > p["max_bullet_lines_ratio"]:
                return "bullet_lines_ratio"
            ellipses = sum(1 for line in lines if line.rstrip().endswith(ELLIPSES))
            if ellipses / len(lines) > p["max_ellipsis_lines_ratio"]:
                return "ellipsis_lines_ratio"
        if alpha_words(text) / n < p["max_non_alpha_words_ratio"]:
            return "non_alpha_words_ratio"
        if min_stop_words > 0:
            # Stop at the min_stop_words-th stop word (in prose, within the first few words).
            stop_words = filter(STOP_WORDS.__contains__, map(str.lower, stripped))
            if next(islice(stop_words, min_stop_words - 1, None), None) is None:
                return "stop_words"
        return None

    return check


def _duplicates(items: list[str]) -> tuple[int, int]:
    """(items that repeat an earlier one, their characters)."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def word_ids(words: list[str]) -> np.ndarray:
    """Each word's index among the distinct words of ``words`` (first seen first)."""
    table: defaultdict[str, int] = defaultdict(count().__next__)
    return np.fromiter(map(table.__getitem__, words), dtype=np.int64, count=len(words))


_MIX = np.uint64(0x9E3779B97F4A7C15)


def ngram_keys(ids: np.ndarray, n: int) -> np.ndarray:
    """A key per n-gram of ``ids`` (position i: words i..i+n-1), equal for equal n-grams: the
    ids mixed into 64 bits (a collision merely overcounts a repeat, with odds ~ 2^-64 each)."""
    keys = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for k in range(n):
        keys = keys * _MIX + ids[k : len(ids) - n + 1 + k].astype(np.uint64)
    return keys


def _repeated_ngram_chars(words: list[str], keys: np.ndarray, ends: np.ndarray, n: int) -> int:
    """Characters in repeated n-grams counted as the Gopher paper does: scanning left to
    right, an n-gram seen before counts its characters and the scan continues after it."""
    seen: set[int] = set()
    repeated = i = 0
    last = len(keys) - 1
    values = keys.tolist()
    while i <= last:
        key = values[i]
        if key in seen:
            repeated += int(ends[i + n] - ends[i])
            i += n
        else:
            seen.add(key)
            i += 1
    return repeated


def _repeats(keys: np.ndarray) -> int:
    """Keys equal to an earlier one (a plain sort: cheaper than `np.unique`'s argsort)."""
    ordered = np.sort(keys)
    return int(np.count_nonzero(ordered[1:] == ordered[:-1]))


def _gopher_repetition(p: dict[str, Any]) -> Check:
    top = [(n, p[f"top_{n}gram_frac"]) for n in (2, 3, 4)]
    dup = [(n, p[f"dup_{n}gram_frac"]) for n in range(5, 11)]

    def check(doc: Text) -> Verdict:
        text = doc.text
        size = len(text)
        if size == 0:
            return None
        stripped = text.strip()
        # The regex splits only where there is something to split (one-paragraph and one-line
        # documents are common and then skip it).
        paragraphs = _PARAGRAPH.split(stripped) if "\n\n" in stripped else [stripped]
        dups, chars = _duplicates(paragraphs)
        if dups / len(paragraphs) > p["dup_para_frac"]:
            return "dup_para_frac"
        if chars / size > p["dup_para_char_frac"]:
            return "dup_para_char_frac"
        lines = _LINE.split(text) if "\n" in text else [text]
        dups, chars = _duplicates(lines)
        if dups / len(lines) > p["dup_line_frac"]:
            return "dup_line_frac"
        if chars / size > p["dup_line_char_frac"]:
            return "dup_line_char_frac"
        words = doc.words
        if not words:
            return None
        ids = word_ids(words)
        ends = np.zeros(len(words) + 1, dtype=np.int64)  # characters before word i: ends[i]
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=ends[1:])
        # Bounds first, counting only when a bound fails (usual prose passes them all). An
        # n-gram occurs at most as often as its rarest word, so its occurrences x characters
        # are at most the sum over its words of count x length: at most n x the largest such
        # product of one word. And at most as often as the most frequent (n-1)-gram.
        times = np.bincount(ids)
        length = np.zeros(len(times), dtype=np.int64)
        length[ids] = ends[1:] - ends[:-1]
        heaviest = int((times * length).max())
        most = int(times.max())
        for n, frac in top:
            if len(words) < n or n * heaviest / size <= frac:
                continue
            longest = int((ends[n:] - ends[:-n]).max())
            if most * longest / size <= frac:
                continue
            keys = ngram_keys(ids, n)
            _, first, counts = np.unique(keys, return_index=True, return_counts=True)
            best = int(np.argmax(counts))
            most = int(counts[best])
            if most > 1:
                i = int(first[best])
                if int(ends[i + n] - ends[i]) * most / size > frac:
                    return f"top_{n}gram_frac"
        keys = ngram_keys(ids, dup[0][0] - 1) if len(words) >= dup[0][0] else ids[:0]
        for n, frac in dup:
            if len(words) < n:
                break
            keys = keys[:-1] * _MIX + ids[n - 1 :].astype(np.uint64)  # the n-grams' keys
            repeats = _repeats(keys)
            if repeats == 0:
                break  # no n-gram repeats, so no longer one does either
            # Bounds of the paper's count: repeats x the longest n-gram, then the characters
            # of every position whose n-gram occurred earlier (overlaps included); only when
            # both fail is the exact left-to-right scan run.
            if repeats * int((ends[n:] - ends[:-n]).max()) / size <= frac:
                continue
            _, first = np.unique(keys, return_index=True)
            later = np.ones(len(keys), dtype=bool)
            later[first] = False
            starts = np.flatnonzero(later)
            if int((ends[starts + n] - ends[starts]).sum()) / size <= frac:
                continue
            if _repeated_ngram_chars(words, keys, ends, n) / size > frac:
                return f"dup_{n}gram_frac"
        return None

    return check


def _language(p: dict[str, Any]) -> Check:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    wanted = set(p["languages"])
    unknown = wanted - set(identifier.labels)
    if unknown:
        raise ValueError(f"filter 'language': unknown language code(s) {sorted(unknown)}")
    min_score, max_chars = p["min_score"], p["max_chars"]

    def check(doc: Text) -> Verdict:
        lang, score = identifier.classify(doc.text[:max_chars])
        if lang not in wanted:
            return f"language_{lang}"
        if score < min_score:
            return "language_score"
        return None

    return check
