"""Task metrics, each computed by the library the field uses for it, so figures compare with
published ones: accuracy and macro-F1 by scikit-learn, BLEU and chrF by sacrebleu (corpus
level, its default 13a tokenisation), ROUGE-L by Google's rouge-score (F-measure, averaged over
examples), and exact match (after stripping surrounding whitespace).

Scales follow each library: accuracy and macro-F1 in [0, 1]; BLEU, chrF, ROUGE-L and exact
match in [0, 100]. The libraries come with the ``[eval]`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence


def accuracy(predicted: Sequence[int], reference: Sequence[int]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(reference, predicted))


def macro_f1(predicted: Sequence[int], reference: Sequence[int], labels: Sequence[int]) -> float:
    """F1 per class over ``labels`` (every class of the task, also those never predicted or
    absent from ``reference``), unweighted mean; a class with no prediction and no reference
    scores 0."""
    from sklearn.metrics import f1_score

    return float(
        f1_score(reference, predicted, labels=list(labels), average="macro", zero_division=0)
    )


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score)


def rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [
        scorer.score(ref, hyp)["rougeL"].fmeasure
        for hyp, ref in zip(hypotheses, references, strict=True)
    ]
    return 100.0 * sum(scores) / max(len(scores), 1)


def exact_match(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    pairs = list(zip(hypotheses, references, strict=True))
    return 100.0 * sum(h.strip() == r.strip() for h, r in pairs) / max(len(pairs), 1)


def classification_metrics(
    predicted: Sequence[int], reference: Sequence[int], num_labels: int
) -> dict[str, float]:
    return {
        "accuracy": accuracy(predicted, reference),
        "macro_f1": macro_f1(predicted, reference, range(num_labels)),
    }


def generation_metrics(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    return {
        "bleu": bleu(hypotheses, references),
        "chrf": chrf(hypotheses, references),
        "rouge_l": rouge_l(hypotheses, references),
        "exact_match": exact_match(hypotheses, references),
    }
