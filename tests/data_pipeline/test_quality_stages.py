"""The quality stages' parts at scale: MinHash signatures equal datasketch's, the ASCII fast
path of the letter-word count equals the regex, and the buckets stage gives the same band files
for 1 and 3 tasks and after a SIGKILL and rerun."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from data_pipeline.configuration import to_yaml
from data_pipeline.quality import QUALITY_DIR, Signer, buckets, clusters, normalise, scan, shingles
from data_pipeline.quality_filters import _ALPHA_WORD, alpha_words
from data_pipeline.schemas import MinHashConfig, PrepareConfig
from tests.data_pipeline.conftest import cli, cli_env
from tests.data_pipeline.test_quality import QUALITY, dup_corpus, quality_recipe

__all__ = ["dup_corpus"]  # the fixture, used below


def band_files(out: str) -> dict[str, bytes]:
    """The committed band files (a SIGKILL during a commit can leave a `.tmp-*` file, which
    nothing reads and finalize removes)."""
    return {p.name: p.read_bytes() for p in sorted(Path(out, QUALITY_DIR, "buckets").glob("0*"))}


@pytest.mark.parametrize(("kind", "size"), [("words", 3), ("words", 5), ("chars", 4)])
def test_signatures_equal_datasketch(kind: Literal["words", "chars"], size: int) -> None:
    from datasketch import MinHash

    rng = random.Random(size)
    vocab = [f"w{i}" for i in range(40)] + ["é", "naïve", "x"]
    documents = [normalise(" ".join(rng.choices(vocab, k=rng.randrange(0, 90)))) for _ in range(60)]
    documents += ["", "one", "one two", "a b c d e f g h"]  # shorter than a shingle, empty
    cfg = MinHashConfig(enabled=True, shingle=kind, shingle_size=size, bands=8, rows=5, seed=3)
    signer = Signer(cfg)
    values, owner = signer.values(documents)
    sigs, signed = signer.sign_many(documents)
    for d, text in enumerate(documents):
        m = MinHash(num_perm=40, seed=3, scheme="affine32", hashfunc=signer.minhash.hashfunc)
        mine = values[owner == d].tolist()
        if kind == "chars":  # datasketch hashes the shingle strings itself
            mine = list(shingles(text, "chars", size))
        m.update_batch(mine)
        assert signed[d] == bool(len(mine)), text
        assert np.array_equal(sigs[d], np.asarray(m.hashvalues, dtype=np.uint32)), text
    # Word shingles: the values are those of each document's own n-grams, one per n-gram.
    if kind == "words":
        for d, text in enumerate(documents):
            words = text.split()
            expected = max(len(words) - size + 1, 1) if words else 0
            assert np.count_nonzero(owner == d) == expected


def test_letter_word_count_fast_paths_equal_the_regex() -> None:
    rng = random.Random(0)
    ascii_only = "ab1_ #.-\t\n\x0b\x1c\x1f!%"
    wide = ascii_only + "é\u2013²½٣\u00a0\u3000ж"  # letters, a dash, numbers, a digit, spaces
    for alphabet in (ascii_only, wide, wide.replace("\u00a0", "").replace("\u3000", "")):
        for _ in range(2000):
            text = "".join(rng.choices(alphabet, k=rng.randrange(0, 40)))
            assert alpha_words(text) == len(_ALPHA_WORD.findall(text)), repr(text)


MANY_BANDS = {**QUALITY, "minhash": {**QUALITY["minhash"], "bands": 150, "rows": 1}}


def test_buckets_are_identical_for_1_and_3_tasks(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    one = quality_recipe(recipe, paths, tmp_path / "one")
    scan(one)
    assert buckets(one) == QUALITY["minhash"]["bands"]
    three = quality_recipe(recipe, paths, tmp_path / "three")
    scan(three, num_tasks=3, task_index=1)
    with pytest.raises(RuntimeError, match="not scanned yet"):
        buckets(three, num_tasks=3, task_index=0)
    scan(three, num_tasks=3, task_index=0)
    scan(three, num_tasks=3, task_index=2)
    done = [buckets(three, num_tasks=3, task_index=i) for i in (2, 0, 1)]
    assert sum(done) == QUALITY["minhash"]["bands"] and min(done) > 0
    assert band_files(three.output) == band_files(one.output)
    assert buckets(three, num_tasks=3, task_index=0) == 0  # committed bands are never redone
    assert clusters(three)["removed"] == clusters(one)["removed"]


def test_sigkill_during_buckets_then_rerun_is_byte_identical(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    reference = quality_recipe(recipe, paths, tmp_path / "ref", quality=MANY_BANDS)
    scan(reference)
    buckets(reference)
    cfg = quality_recipe(recipe, paths, tmp_path / "out", quality=MANY_BANDS)
    scan(cfg)
    config = tmp_path / "recipe.yaml"
    config.write_text(to_yaml(cfg))
    proc = subprocess.Popen(cli("quality", str(config), "--stage", "buckets", "-q"), env=cli_env())
    files = Path(cfg.output, QUALITY_DIR, "buckets")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if files.is_dir() and any(files.glob("*.npy")):
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL  # killed while it was writing band files
    assert 0 < len(list(files.glob("*.npy"))) < MANY_BANDS["minhash"]["bands"]
    buckets(cfg)
    assert band_files(cfg.output) == band_files(reference.output)
