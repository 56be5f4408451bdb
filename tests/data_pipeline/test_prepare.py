"""prepare end to end on real files: the shard and manifest contracts, determinism across worker
counts and tasks, resume, dedup and the position split."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from data_pipeline import manifest_fingerprint
from data_pipeline.prepare import finalize, prepare
from data_pipeline.readers import UnitReader
from data_pipeline.schemas import PrepareConfig
from data_pipeline.tokenizer import Tokenizer
from data_pipeline.unit_job import validation_by_hash
from data_pipeline.units import plan_units
from data_pipeline.verify import read_samples, verify

NAME = re.compile(r"^(train|validation)-(\d{5})-(\d{5})\.tar$")


def shard_bytes(out: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def stream_of(out: Path, manifest: dict, split: str, unit: int) -> tuple[list[int], list[dict]]:
    tokens: list[int] = []
    metas: list[dict] = []
    keys: list[str] = []
    for entry in manifest["splits"][split]["shards"]:
        m = NAME.match(entry["name"])
        assert m, entry["name"]
        if int(m[2]) != unit:
            continue
        for key, parts in read_samples((out / entry["name"]).read_bytes()):
            arr = np.load(io.BytesIO(parts["tokens.npy"]))
            assert arr.dtype == np.uint16 and arr.shape == (manifest["chunk_len"],)
            tokens += arr.tolist()
            metas.append(json.loads(parts["meta.json"]))
            keys.append(key)
    assert keys == [f"{unit:05d}-{i:08d}" for i in range(len(keys))]  # consecutive, in order
    return tokens, metas


def test_shards_follow_the_contract(
    recipe: Callable[..., PrepareConfig], char_tokenizer: str
) -> None:
    cfg = recipe()
    prepare(cfg, workers=1)
    out = Path(cfg.output)
    manifest = json.loads((out / "manifest.json").read_bytes())
    tok = Tokenizer.load(char_tokenizer)
    eos, chunk = tok.special_ids.eos, cfg.chunk_len
    assert (
        manifest["format_version"] == 1
        and manifest["dtype"] == "uint16"
        and manifest["chunk_len"] == chunk
    )
    assert (
        manifest["tokenizer"]["hash"] == tok.hash
        and manifest["tokenizer"]["path"] == char_tokenizer
    )
    assert manifest["tokenizer"]["special_ids"] == tok.special_ids.to_dict()
    units = plan_units(cfg)
    assert len(units) > 2  # the 200 kB file was cut into 64 kB ranges
    doc_bytes = {"train": 0, "validation": 0}
    tail = 0
    for unit in units:
        docs = {"train": [], "validation": []}  # type: dict[str, list]
        for d in UnitReader(unit, cfg.source).documents():
            val = validation_by_hash(d.text.encode(), b"", cfg.split.validation_fraction)
            docs["validation" if val else "train"].append(d)
        for split, ds in docs.items():
            expected: list[int] = []
            starts: list[int] = []
            for ids in tok.encode_batch([d.text for d in ds]):
                starts.append(len(expected))
                expected += [*ids, eos]
            tokens, metas = stream_of(out, manifest, split, unit.index)
            n = len(expected) // chunk * chunk
            assert tokens == expected[:n]  # documents joined with EOS, in order, tail dropped
            tail += len(expected) - n
            got_starts = [i * chunk + s for i, m in enumerate(metas) for s in m["doc_starts"]]
            assert got_starts == [s for s in starts if s < n]
            doc_bytes[split] += sum(m["utf8_bytes"] for m in metas)
            if n == len(expected):
                assert sum(m["utf8_bytes"] for m in metas) == sum(d.nbytes for d in ds)
    for split in ("train", "validation"):
        s = manifest["splits"][split]
        assert s["utf8_bytes"] == doc_bytes[split] == sum(x["utf8_bytes"] for x in s["shards"])
        assert s["tokens"] == s["samples"] * chunk
        for entry in s["shards"]:
            assert (out / entry["name"]).stat().st_size == entry["bytes"]
    assert manifest["splits"]["validation"]["documents"] > 0
    assert manifest["counters"]["tail_tokens_dropped"] == tail
    assert manifest["sources"][0]["size"] == Path(cfg.source.paths[0]).stat().st_size
    assert manifest_fingerprint(cfg.output) == manifest_fingerprint(
        (out / "manifest.json").read_bytes()
    )
    assert verify(cfg.output) == {}


def test_identical_bytes_across_workers_tasks_and_reruns(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    one = recipe(output=str(tmp_path / "one"))
    prepare(one, workers=1)
    reference = shard_bytes(one.output)
    manifest = (Path(one.output) / "manifest.json").read_bytes()
    assert len(reference) > 4
    two = recipe(output=str(tmp_path / "two"))
    prepare(two, workers=2)
    assert shard_bytes(two.output) == reference
    # Three independent tasks, then finalize: the same shards, and the same manifest bytes as a
    # one-task run into the same place.
    Path(one.output).rename(tmp_path / "one-moved")
    for index in range(3):
        result = prepare(one, workers=1, num_tasks=3, task_index=index)
        assert result.fingerprint is None
    assert finalize(one) == manifest_fingerprint(manifest)
    assert shard_bytes(one.output) == reference
    assert (Path(one.output) / "manifest.json").read_bytes() == manifest
    # A rerun skips every committed unit and rewrites the same manifest.
    again = prepare(one, workers=2)
    assert again.units_run == 0 and again.units_skipped == again.units_total


def test_dedup_drops_exact_duplicates(recipe: Callable[..., PrepareConfig], tmp_path: Path) -> None:
    src = tmp_path / "dups.txt"
    paragraphs = [f"paragraph {i} says something." for i in range(30)]
    src.write_text(
        "\n\n".join(paragraphs + paragraphs[:10] + ["paragraph 3 says something."]) + "\n"
    )
    cfg = recipe(source={"paths": [str(src)]}, dedup=True, unit_bytes=1 << 20, chunk_len=8)
    prepare(cfg, workers=1)
    counters = json.loads((Path(cfg.output) / "manifest.json").read_text())["counters"]
    assert counters["documents_read"] == 41 and counters["duplicates_dropped"] == 11


def test_position_split_like_nanogpt(
    recipe: Callable[..., PrepareConfig], corpus_dir: Path
) -> None:
    cfg = recipe(
        source={"paths": [str(corpus_dir / "shakespeare.txt")], "text_mode": "file"},
        split={"mode": "position", "validation_fraction": 0.1},
        unit_bytes=1 << 20,
    )
    prepare(cfg, workers=1)
    m = json.loads((Path(cfg.output) / "manifest.json").read_text())
    total = Path(cfg.source.paths[0]).stat().st_size
    train, val = m["splits"]["train"], m["splits"]["validation"]
    # ASCII text, one token per character: the split is 90/10 of the file up to dropped tails.
    assert (
        abs(train["utf8_bytes"] - 0.9 * total) < 300 and abs(val["utf8_bytes"] - 0.1 * total) < 300
    )
    tok = Tokenizer.load(cfg.tokenizer)
    first = Path(cfg.output) / train["shards"][0]["name"]
    ids = np.load(io.BytesIO(read_samples(first.read_bytes())[0][1]["tokens.npy"])).tolist()
    assert tok.decode(ids) == Path(cfg.source.paths[0]).read_text()[: cfg.chunk_len]


def test_files_split_holds_out_whole_inputs(
    recipe: Callable[..., PrepareConfig], corpus_dir: Path
) -> None:
    """WikiText's protocol: train on one file, validate on another, every document of each."""
    train_file, held_out = corpus_dir / "wikitext.txt", corpus_dir / "shakespeare.txt"
    cfg = recipe(
        source={"paths": [str(train_file), str(held_out)]},
        split={"mode": "files", "validation_paths": [str(corpus_dir / "shakes*.txt")]},
    )
    # Both files are cut into several units: the fixed split must hold for every one of them.
    units = plan_units(cfg)
    assert {(u.source.path, u.split) for u in units} == {
        (str(train_file), "train"),
        (str(held_out), "validation"),
    } and len(units) > 4
    prepare(cfg, workers=2)
    m = json.loads((Path(cfg.output) / "manifest.json").read_text())
    # Each split holds (nearly: blank lines between paragraphs and unit tails are not text) all
    # of its own file and nothing of the other.
    for split, source in (("train", train_file), ("validation", held_out)):
        assert (
            0.9 * source.stat().st_size < m["splits"][split]["utf8_bytes"] <= source.stat().st_size
        )
    tok = Tokenizer.load(cfg.tokenizer)
    first = Path(cfg.output) / m["splits"]["validation"]["shards"][0]["name"]
    ids = np.load(io.BytesIO(read_samples(first.read_bytes())[0][1]["tokens.npy"])).tolist()
    assert tok.decode(ids[:40]) == held_out.read_text()[:40]  # one character a token


def test_files_split_names_the_key_when_a_path_is_no_input(
    recipe: Callable[..., PrepareConfig], corpus_dir: Path
) -> None:
    import pytest

    cfg = recipe(
        split={"mode": "files", "validation_paths": [str(corpus_dir / "wikitext.txt")]},
    )  # the recipe's only input is shakespeare.txt
    with pytest.raises(ValueError, match=r"split\.validation_paths: .*wikitext\.txt names no"):
        plan_units(cfg)
    with pytest.raises(ValueError, match="validation_paths: mode 'files' needs"):
        recipe(split={"mode": "files"})
    with pytest.raises(ValueError, match="only used with mode 'files'"):
        recipe(split={"mode": "hash", "validation_paths": ["x.txt"]})


def test_plain_tar_writer_matches_webdataset_byte_for_byte() -> None:
    import webdataset

    from data_pipeline.sample_format import encode_sample
    from data_pipeline.shard_writer import PlainTarWriter

    samples = [
        {
            "__key__": f"00001-{i:08d}",
            **encode_sample(np.arange(i, i + 8, dtype=np.uint16), [0, 3], 11),
        }
        for i in range(5)
    ]
    a, b = io.BytesIO(), io.BytesIO()
    wds = webdataset.TarWriter(a, encoder=False, mtime=0.0)
    plain = PlainTarWriter(b, mtime=0.0)
    for s in samples:
        wds.write(s)
        plain.write(s)
    wds.close()
    plain.close()
    assert a.getvalue() == b.getvalue()
