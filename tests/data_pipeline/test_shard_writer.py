"""The fast shard writer against what it replaces: `tarfile` archives (and so webdataset's),
``np.save`` and ``json.dumps`` per sample, and tarfile's stream buffering for the shard cut."""

from __future__ import annotations

import io
import json
import random
import tarfile
from typing import Any

import numpy as np
import pytest

from data_pipeline.sample_format import encode_sample, meta_json, npy_header
from data_pipeline.shard_writer import PlainTarWriter, SplitStream, stream_flushed


def tarfile_archive(samples: list[dict[str, Any]], mtime: float = 0.0) -> bytes:
    """The reference: members added one by one with `tarfile`, as webdataset's TarWriter does."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w|") as tar:
        for obj in samples:
            for k in sorted(obj):
                if k.startswith("_"):
                    continue
                ti = tarfile.TarInfo(f"{obj['__key__']}.{k}")
                ti.size, ti.mtime, ti.mode = len(obj[k]), mtime, 0o444
                ti.uname = ti.gname = "bigdata"
                tar.addfile(ti, io.BytesIO(obj[k]))
    return buf.getvalue()


def test_archive_matches_tarfile_for_many_sizes_and_names() -> None:
    rng = random.Random(0)
    samples: list[dict[str, Any]] = []
    for i in range(200):
        n = rng.choice([0, 1, 7, 511, 512, 513, 4000])
        samples.append({"__key__": f"{rng.randrange(10**6):05d}-{i:08d}", "bin": bytes(n)})
    samples.append({"__key__": "k" * 150, "long.bin": b"x"})  # long name: PAX path record
    samples.append({"__key__": "é-ü", "txt": "é".encode()})  # non-ASCII name: PAX path record
    buf = io.BytesIO()
    writer = PlainTarWriter(buf, mtime=0.0)
    for s in samples:
        writer.write(s)
    writer.close()
    assert buf.getvalue() == tarfile_archive(samples)
    assert writer.offset == len(buf.getvalue())


def test_integer_and_float_mtime_headers_are_not_mixed_up() -> None:
    """mtime 0 and 0.0 compare equal, but only the float one adds a PAX record."""
    sample = {"__key__": "00000-00000000", "bin": b"abc"}
    for mtime in (0.0, 0, 0.0, 0):
        buf = io.BytesIO()
        writer = PlainTarWriter(buf, mtime=mtime)
        writer.write(sample)
        writer.close()
        assert buf.getvalue() == tarfile_archive([sample], mtime)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
@pytest.mark.parametrize("length", [2, 37, 512, 70000])
def test_npy_header_is_what_np_save_writes(dtype: str, length: int) -> None:
    arr = (np.arange(length) % 60000).astype(dtype)
    assert npy_header(dtype, length) + arr.tobytes() == encode_sample(arr, [], 0)["tokens.npy"]


@pytest.mark.parametrize(
    ("starts", "nbytes"), [([], 0), ([0], 1), ([0, 5, 511], 123456789), ([3, 4], 2**40)]
)
def test_meta_json_is_what_json_dumps_writes(starts: list[int], nbytes: int) -> None:
    expected = json.dumps({"doc_starts": starts, "utf8_bytes": nbytes}, sort_keys=True)
    assert meta_json(starts, nbytes) == expected.encode()


def test_shard_cut_follows_tarfile_stream_buffering() -> None:
    """Shards were cut when tarfile's stream had passed ``shard_bytes`` to the buffer; the
    writer computes that from its offset instead."""
    rng = random.Random(1)
    buf = io.BytesIO()
    tar = tarfile.open(fileobj=buf, mode="w|")  # noqa: SIM115
    offset = 0
    for _ in range(300):
        size = rng.choice([0, 5, 600, 10240, 20000])
        ti = tarfile.TarInfo("x")
        ti.size = size
        tar.addfile(ti, io.BytesIO(bytes(size)))
        offset += 512 + size + (-size % 512)
        assert stream_flushed(offset) == buf.tell()
    tar.close()


class _Memory:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def commit(self, name: str, data: bytes) -> None:
        self.files[name] = bytes(data)


def test_split_stream_samples_match_per_sample_encoding() -> None:
    """A stream's shards hold exactly the samples `encode_sample` makes, chunk by chunk."""
    rng = random.Random(2)
    out = _Memory()
    stream = SplitStream(out, "train", 3, 16, "uint16", 4096, eos=1)  # type: ignore[arg-type]
    docs = [[rng.randrange(2, 500) for _ in range(rng.randrange(0, 40))] for _ in range(60)]
    sizes = [rng.randrange(1, 200) for _ in docs]
    for lo in range(0, len(docs), 7):
        stream.add(docs[lo : lo + 7], sizes[lo : lo + 7])
    dropped = stream.finish()
    flat: list[int] = []
    starts: list[int] = []
    for d in docs:
        starts.append(len(flat))
        flat += [*d, 1]
    n = len(flat) // 16
    assert dropped == len(flat) - n * 16 and len(stream.shards) > 1
    samples = []
    for c in range(n):
        chunk_starts = [s - c * 16 for s in starts if c * 16 <= s < (c + 1) * 16]
        sample = encode_sample(np.array(flat[c * 16 : (c + 1) * 16], np.uint16), chunk_starts, 0)
        samples.append((f"00003-{c:08d}", sample["tokens.npy"], chunk_starts))
    got = []
    for entry in stream.shards:
        with tarfile.open(fileobj=io.BytesIO(out.files[entry["name"]])) as tar:
            members = tar.getmembers()
            for meta, toks in zip(members[::2], members[1::2], strict=True):
                f_meta, f_toks = tar.extractfile(meta), tar.extractfile(toks)
                assert f_meta is not None and f_toks is not None
                got.append(
                    (
                        toks.name.split(".")[0],
                        f_toks.read(),
                        json.loads(f_meta.read())["doc_starts"],
                    )
                )
    assert got == samples


def test_committer_keeps_order_and_stops_at_a_failure() -> None:
    """Commits happen in submission order on the background thread; after a failed one,
    nothing more is committed (a marker never follows a failed shard) and the error is raised
    by every later `submit` and `wait`."""
    from data_pipeline.storage import Committer

    done: list[str] = []

    class Flaky:
        def commit(self, name: str, data: bytes) -> None:
            if name == "bad":
                raise OSError("disk full")
            done.append(name)

    committer = Committer(Flaky(), max_pending=10)  # type: ignore[arg-type]
    for i in range(20):
        committer.submit(f"s{i}", bytes(7))
    committer.submit("marker", lambda: b"{}", then=lambda: done.append("then"))
    committer.wait()
    assert done == [*(f"s{i}" for i in range(20)), "marker", "then"]
    committer.submit("bad", b"x")
    with pytest.raises(OSError, match="disk full"):
        committer.wait()
        committer.submit("after", b"x")
    with pytest.raises(OSError, match="disk full"):
        committer.submit("after", b"x")
    assert "after" not in done
