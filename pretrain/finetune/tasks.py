"""Labelled tasks built from the bundled corpora, deterministically (`pretrain make-task`).

- ``speakers`` (classification): who speaks a tinyshakespeare speech, among the N speakers
  with the most speeches. A speech is a block of lines under a ``NAME:`` line.
- ``headings`` (seq2seq): a WikiText section's heading from the first sentence of the section
  (``= = Reception = =`` from "The film received ...").
- ``sources`` (classification, or seq2seq naming the source): which corpus a passage (a
  paragraph, at most `PASSAGE_CHARS` characters) comes from, the label being the corpus
  file's folder name. An easy task: the tests use it to show a tiny model learns through the
  whole fine-tuning path.

No document is in both splits: speeches are grouped into documents of
`SPEECHES_PER_DOCUMENT` consecutive speeches (a stretch of one scene), WikiText sections by
article, and one document in ``validation_every`` goes to validation, by position. A
validation record whose text is also a training record's is dropped (short speeches such as
"Ay." repeat), and counted.

Each record carries its document's index (``document``), so the split can be checked.
Torch-free, like the data pipeline.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

SPEECHES_PER_DOCUMENT = 20
PASSAGE_CHARS = 300
_HEADING = re.compile(r"^ (=(?: =)*) (.+?) \1 $")


def speeches(text: str) -> Iterator[tuple[str, str]]:
    """(speaker, speech) of a tinyshakespeare-formatted text, in order."""
    for block in text.split("\n\n"):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].endswith(":") and lines[0][:-1].strip():
            yield lines[0][:-1].strip(), "\n".join(lines[1:]).strip()


def speaker_records(text: str, speakers: int) -> list[dict[str, object]]:
    every = list(speeches(text))
    top = {name for name, _ in Counter(n for n, _ in every).most_common(speakers)}
    return [
        {"text": speech, "label": name, "document": index // SPEECHES_PER_DOCUMENT}
        for index, (name, speech) in enumerate(every)
        if name in top and speech
    ]


def source_records(named: list[tuple[str, str]], per_source: int) -> list[dict[str, object]]:
    """Up to ``per_source`` passages of each (label, text), from its start; documents of
    `SPEECHES_PER_DOCUMENT` consecutive passages, numbered across the texts."""
    records: list[dict[str, object]] = []
    document = 0
    for label, text in named:
        passages = [
            p.strip()[:PASSAGE_CHARS]
            for p in re.split(r"\n[ \t]*\n", text)
            if p.strip() and not _HEADING.match(p.strip("\n"))
        ][:per_source]
        for index, passage in enumerate(passages):
            records.append(
                {
                    "text": passage,
                    "label": label,
                    "document": document + index // SPEECHES_PER_DOCUMENT,
                }
            )
        document += -(-len(passages) // SPEECHES_PER_DOCUMENT)
    return records


def _first_sentence(paragraph: str) -> str:
    end = paragraph.find(" . ")
    return (paragraph if end < 0 else paragraph[: end + 2]).strip()


def heading_records(texts: list[str]) -> list[dict[str, object]]:
    """A record per WikiText section with a paragraph under its heading; articles (level-1
    headings) numbered across ``texts`` in order."""
    records: list[dict[str, object]] = []
    article = -1
    heading: str | None = None
    for text in texts:
        for line in text.split("\n"):
            match = _HEADING.match(line)
            if match:
                level = match.group(1).count("=")
                if level == 1:
                    article += 1
                    heading = None
                else:
                    heading = match.group(2).strip()
                continue
            # A heading WikiText lost to <unk> cannot be restored: no record.
            if heading is not None and line.strip() and article >= 0 and "<unk>" not in heading:
                source = _first_sentence(line)
                records.append({"source": source, "target": heading, "document": article})
                heading = None  # one record per section: its first paragraph
    return records


def split(
    records: list[dict[str, object]], validation_every: int, text_key: str
) -> tuple[list[dict[str, object]], list[dict[str, object]], int]:
    """(train, validation, validation records dropped as repeats of a training text)."""
    train = [
        r for r in records if int(str(r["document"])) % validation_every != validation_every - 1
    ]
    held = [
        r for r in records if int(str(r["document"])) % validation_every == validation_every - 1
    ]
    seen = {r[text_key] for r in train}
    validation = [r for r in held if r[text_key] not in seen]
    return train, validation, len(held) - len(validation)


def write_jsonl(path: Path, records: list[dict[str, object]]) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)  # a reader never sees half a file


def build(
    task: str,
    inputs: list[str],
    out: Path,
    *,
    speakers: int = 4,
    validation_every: int = 10,
    per_source: int = 400,
) -> dict[str, object]:
    texts = []
    for name in inputs:
        try:
            texts.append(Path(name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{name}: cannot read the corpus ({err})") from None
    if task == "speakers":
        records, key = speaker_records("\n\n".join(texts), speakers), "text"
    elif task == "headings":
        records, key = heading_records(texts), "source"
    elif task == "sources":
        named = [
            (Path(name).resolve().parent.name, text)
            for name, text in zip(inputs, texts, strict=True)
        ]
        records, key = source_records(named, per_source), "text"
    else:
        raise ValueError(f"unknown task {task!r}: speakers, headings or sources")
    if not records:
        raise ValueError(f"{', '.join(inputs)}: no {task} record found (is it the right corpus?)")
    train, validation, dropped = split(records, validation_every, key)
    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "train.jsonl", train)
    write_jsonl(out / "validation.jsonl", validation)
    label_key = "target" if task == "headings" else "label"
    summary = {
        "task": task,
        "inputs": inputs,
        "train": len(train),
        "validation": len(validation),
        "validation_dropped_as_repeats": dropped,
        "documents": {
            "train": len({r["document"] for r in train}),
            "validation": len({r["document"] for r in validation}),
        },
        "most_frequent_targets": Counter(str(r[label_key]) for r in train).most_common(5),
    }
    (out / "task.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(args: argparse.Namespace) -> int:
    summary = build(
        args.task,
        list(args.inputs),
        Path(args.out),
        speakers=args.speakers,
        validation_every=args.validation_every,
        per_source=args.per_source,
    )
    logger.info(
        "%s: %d training and %d validation records (%d validation repeats of a training text "
        "dropped) in %s",
        args.task,
        summary["train"],
        summary["validation"],
        summary["validation_dropped_as_repeats"],
        args.out,
    )
    print(json.dumps(summary, indent=1))
    return 0
