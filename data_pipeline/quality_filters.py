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
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate
from typing import Any

Verdict = str | None  # None: keep; otherwise the heuristic that rejected the document
Filter = Callable[[str], Verdict]

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
    """The filter ``name`` with ``params`` over its defaults."""
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
        self.filters = [build_filter(name, params) for name, params in specs]

    def reject(self, text: str) -> tuple[int, str] | None:
        for index, check in enumerate(self.filters):
            verdict = check(text)
            if verdict is not None:
                return index, verdict
        return None


# -- filters ------------------------------------------------------------------------------
def _length(p: dict[str, Any]) -> Filter:
    min_bytes, max_bytes, min_words, max_words = (
        p["min_bytes"],
        p["max_bytes"],
        p["min_words"],
        p["max_words"],
    )
    count_words = min_words > 0 or max_words >= 0

    def check(text: str) -> Verdict:
        if min_bytes or max_bytes >= 0:
            n = len(text.encode("utf-8"))
            if n < min_bytes:
                return "min_bytes"
            if 0 <= max_bytes < n:
                return "max_bytes"
        if count_words:
            words = len(text.split())
            if words < min_words:
                return "min_words"
            if 0 <= max_words < words:
                return "max_words"
        return None

    return check


def _gopher_quality(p: dict[str, Any]) -> Filter:
    def check(text: str) -> Verdict:
        words = text.split()
        n = len(words)
        if n < p["min_words"]:
            return "min_words"
        if n > p["max_words"]:
            return "max_words"
        stripped = [w.strip(_PUNCT) for w in words]
        content = [w for w in stripped if w]  # punctuation-only tokens are no words
        mean = sum(map(len, content)) / len(content) if content else 0.0
        if mean < p["min_mean_word_length"]:
            return "min_mean_word_length"
        if mean > p["max_mean_word_length"]:
            return "max_mean_word_length"
        symbols = text.count("#") + text.count("...") + text.count("…")
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
        alpha = sum(1 for w in words if any(c.isalpha() for c in w))
        if alpha / n < p["max_non_alpha_words_ratio"]:
            return "non_alpha_words_ratio"
        if sum(1 for w in stripped if w.lower() in STOP_WORDS) < p["min_stop_words"]:
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


def _gopher_repetition(p: dict[str, Any]) -> Filter:
    top = [(n, p[f"top_{n}gram_frac"]) for n in (2, 3, 4)]
    dup = [(n, p[f"dup_{n}gram_frac"]) for n in range(5, 11)]

    def check(text: str) -> Verdict:
        size = len(text)
        if size == 0:
            return None
        paragraphs = _PARAGRAPH.split(text.strip())
        count, chars = _duplicates(paragraphs)
        if count / len(paragraphs) > p["dup_para_frac"]:
            return "dup_para_frac"
        if chars / size > p["dup_para_char_frac"]:
            return "dup_para_char_frac"
        lines = _LINE.split(text)
        count, chars = _duplicates(lines)
        if count / len(lines) > p["dup_line_frac"]:
            return "dup_line_frac"
        if chars / size > p["dup_line_char_frac"]:
            return "dup_line_char_frac"
        words = text.split()
        # Characters of the n-gram starting at word i: prefix sums of word lengths.
        ends = [0, *accumulate(map(len, words))]
        for n, frac in top:
            if len(words) < n:
                continue
            grams = Counter(zip(*(words[i:] for i in range(n)), strict=False))
            gram, times = grams.most_common(1)[0]
            if times > 1 and sum(map(len, gram)) * times / size > frac:
                return f"top_{n}gram_frac"
        for n, frac in dup:
            if len(words) < n:
                continue
            # Non-overlapping repeats, as the Gopher paper counts them: after a repeated
            # n-gram, continue after it.
            seen: set[tuple[str, ...]] = set()
            repeated = i = 0
            last = len(words) - n
            while i <= last:
                gram = tuple(words[i : i + n])
                if gram in seen:
                    repeated += ends[i + n] - ends[i]
                    i += n
                else:
                    seen.add(gram)
                    i += 1
            if repeated / size > frac:
                return f"dup_{n}gram_frac"
        return None

    return check


def _language(p: dict[str, Any]) -> Filter:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    wanted = set(p["languages"])
    unknown = wanted - set(identifier.labels)
    if unknown:
        raise ValueError(f"filter 'language': unknown language code(s) {sorted(unknown)}")
    min_score, max_chars = p["min_score"], p["max_chars"]

    def check(text: str) -> Verdict:
        lang, score = identifier.classify(text[:max_chars])
        if lang not in wanted:
            return f"language_{lang}"
        if score < min_score:
            return "language_score"
        return None

    return check
