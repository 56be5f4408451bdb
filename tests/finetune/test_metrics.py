"""Each task metric against a value computed by hand on a small fixed example."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn", reason="scikit-learn comes with the [eval] extra")
pytest.importorskip("sacrebleu", reason="sacrebleu comes with the [eval] extra")
pytest.importorskip("rouge_score", reason="rouge-score comes with the [eval] extra")

from pretrain.finetune import metrics


def test_accuracy() -> None:
    # 3 of 4 right.
    assert metrics.accuracy([0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(0.75)


def test_macro_f1_averages_every_class() -> None:
    # class 0: P=1 R=1 F=1; class 1: P=1/2 R=1 F=2/3; class 2: P=1 R=1/2 F=2/3.
    assert metrics.macro_f1([0, 1, 1, 2], [0, 1, 2, 2], range(3)) == pytest.approx(7 / 9)
    # A class never predicted nor present still counts, as 0: (1 + 2/3 + 2/3 + 0) / 4.
    assert metrics.macro_f1([0, 1, 1, 2], [0, 1, 2, 2], range(4)) == pytest.approx(7 / 12)


def test_bleu() -> None:
    # n-gram precisions 5/6, 3/5, 2/4, 1/3, same length (no brevity penalty): their
    # geometric mean.
    expected = 100 * math.exp(
        (math.log(5 / 6) + math.log(3 / 5) + math.log(1 / 2) + math.log(1 / 3)) / 4
    )
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(
        expected
    )
    assert expected == pytest.approx(53.728, abs=1e-3)


def test_chrf() -> None:
    # Character 1-, 2-, 3-grams of "abc" vs "abd": precision = recall = 2/3, 1/2, 0 (no
    # 4- to 6-grams); averaged: 7/18, and F-beta of equal P and R is that value.
    assert metrics.chrf(["abc"], ["abd"]) == pytest.approx(100 * 7 / 18)


def test_rouge_l() -> None:
    # LCS 3 words: P = 3/3, R = 3/4, F = 2PR / (P + R) = 6/7; averaged with an exact pair (1).
    assert metrics.rouge_l(["the cat sat", "a b"], ["the cat sat down", "a b"]) == pytest.approx(
        100 * (6 / 7 + 1) / 2
    )


def test_exact_match_ignores_surrounding_whitespace_only() -> None:
    assert metrics.exact_match([" ROMEO ", "Juliet", "x"], ["ROMEO", "JULIET", "x"]) == (
        pytest.approx(200 / 3)
    )
