"""Quality stages end to end: global exact and MinHash near-dedup across units, files, tasks and
the split; each filter on hand-made documents that must pass and must fail; accounting in the
manifest, `inspect` and ``--keep-rejected``; a SIGKILL during a stage, then a rerun."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from data_pipeline import manifest_fingerprint
from data_pipeline.configuration import ConfigError, from_dict
from data_pipeline.inspection import summarize
from data_pipeline.prepare import finalize, prepare
from data_pipeline.prepare import recipe as recipe_of
from data_pipeline.quality import buckets, clusters, normalise, scan
from data_pipeline.quality_filters import build_filter
from data_pipeline.schemas import PrepareConfig
from tests.data_pipeline.conftest import cli, cli_env
from tests.data_pipeline.test_prepare import shard_bytes

SENTENCE = (
    "the king and queen of england rode with their knights to a castle by the sea where "
    "storms broke over walls of grey stone while merchants sold bread wine cloth and iron to "
    "sailors who had crossed the water from france spain and lands far to the south"
)
WORDS = SENTENCE.split(" ")


def paragraph(rng: random.Random, n: int = 60) -> str:
    return " ".join(rng.choice(WORDS) + rng.choice(["", "s", "ed", "ing", "er"]) for _ in range(n))


def perturb(text: str, rng: random.Random, changes: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), changes):
        words[i] = f"zq{rng.randrange(10**6)}"
    return " ".join(words)


@pytest.fixture
def dup_corpus(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """Two files of 60-word paragraphs. b.txt holds exact copies of a.txt's paragraphs (one with
    other case, punctuation and spacing), near copies (3 of 60 words changed) and a near copy
    of a paragraph of its own; a.txt ends with a copy of its first paragraph. Returns the paths
    and, per inserted copy's text, the original it copies."""
    rng = random.Random(7)
    a = [paragraph(rng) for _ in range(80)]
    b = [paragraph(rng) for _ in range(40)]
    truth: dict[str, str] = {}
    inserted_b = [a[5], a[6].upper().replace(" ", "  ,"), a[70]]
    for i in (10, 11, 12, 13, 14, 75):
        inserted_b.append(perturb(a[i], rng, 3))
        truth[inserted_b[-1]] = a[i]
    inserted_b.append(perturb(b[3], rng, 2))
    truth[inserted_b[-1]] = b[3]
    for text, original in zip(inserted_b[:3], [a[5], a[6], a[70]], strict=True):
        truth[text] = original
    a.append(a[0])
    truth[a[0]] = a[0]  # the second copy of a[0] (the first one is kept)
    b_all = b[:20] + inserted_b + b[20:]
    (tmp_path / "a.txt").write_text("\n\n".join(a) + "\n")
    (tmp_path / "b.txt").write_text("\n\n".join(b_all) + "\n")
    return [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], truth


QUALITY: dict[str, Any] = {
    "exact_dedup": True,
    "minhash": {
        "enabled": True,
        "shingle_size": 3,
        "threshold": 0.6,
        "bands": 20,
        "rows": 4,
    },
}


def quality_recipe(
    recipe: Callable[..., PrepareConfig], paths: list[str], out: Path, **over: Any
) -> PrepareConfig:
    return recipe(
        output=str(out),
        source={"paths": paths},
        quality=over.pop("quality", QUALITY),
        unit_bytes=8192,
        chunk_len=32,
        split={"mode": "hash", "validation_fraction": 0.3},
        **over,
    )


def kept_texts(out: Path, removed_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(line)
        for path in sorted(removed_dir.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]


def test_exact_and_near_duplicates_go_across_files_units_and_the_split(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, truth = dup_corpus
    cfg = quality_recipe(recipe, paths, tmp_path / "out")
    prepare(cfg, workers=1, keep_rejected=str(tmp_path / "rejected"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rejected = kept_texts(tmp_path / "out", tmp_path / "rejected")
    # Every inserted copy or its original (validation copies are kept first), and nothing else.
    assert len(rejected) == len(truth)
    removed = {r["text"] for r in rejected}
    for copy, original in truth.items():
        assert (copy in removed) != (original in removed) or copy == original, copy[:40]
    reasons = {r["reason"] for r in rejected}
    assert reasons == {"exact_duplicate", "near_duplicate"}
    exact = [r for r in rejected if r["reason"] == "exact_duplicate"]
    assert len(exact) == 4  # a[5], a[6] (normalised), a[70], a[0]
    c = manifest["counters"]
    assert c["removed"] == {"exact_duplicate": 4, "near_duplicate": 7}
    assert c["removed_bytes"]["exact_duplicate"] == sum(len(r["text"]) for r in exact)
    q = manifest["quality"]
    assert q["removed"] == c["removed"] and q["near_duplicate_clusters"] == 7
    assert q["cluster_sizes"] == {"2": 7}
    # Units: the corpus is cut into several, so copies crossed unit (and file) boundaries.
    assert (
        len({r["unit"] for r in rejected}) >= 2 and len(list(Path(cfg.output).glob("_units/*"))) > 4
    )
    # The split: only one copy is left, so none is on both sides; and when any copy is
    # validation, the one kept is (corpus order puts validation first).
    sides = {
        u: np.load(path)["validation"]
        for u, path in enumerate(sorted(Path(cfg.output).glob("_quality/scan/*.npz")))
    }
    crossed = [r for r in rejected if sides[r["unit"]][r["document"]]]
    assert crossed  # some copies were drawn into validation
    for r in crossed:
        assert sides[r["kept"][0]][r["kept"][1]], r
    text = summarize(cfg.output)
    assert "exact_duplicate 4" in text and "near_duplicate 7" in text


def test_output_is_identical_for_workers_and_tasks(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    one = quality_recipe(recipe, paths, tmp_path / "one")
    prepare(one, workers=1)
    reference = shard_bytes(one.output)
    manifest = (Path(one.output) / "manifest.json").read_bytes()
    two = quality_recipe(recipe, paths, tmp_path / "two")
    prepare(two, workers=2)
    assert shard_bytes(two.output) == reference
    assert (Path(two.output) / "manifest.json").read_bytes().replace(
        str(tmp_path / "two").encode(), str(tmp_path / "one").encode()
    ) == manifest
    # Every stage as 3 independent tasks (bands of 2 tasks), then 3 prepare tasks.
    Path(one.output).rename(tmp_path / "one-moved")
    with pytest.raises(RuntimeError, match="quality stages are not done"):
        prepare(one, workers=1, num_tasks=3, task_index=0)
    for index in range(3):
        scan(one, workers=1, num_tasks=3, task_index=index)
    for index in range(2):
        buckets(one, num_tasks=2, task_index=index)
    clusters(one)
    for index in range(3):
        prepare(one, workers=1, num_tasks=3, task_index=index)
    assert finalize(one) == manifest_fingerprint(manifest)
    assert shard_bytes(one.output) == reference


def test_recipes_without_quality_keep_their_manifest(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    cfg = recipe(output=str(tmp_path / "plain"))
    assert "quality" not in recipe_of(cfg)
    prepare(cfg, workers=1)
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert "quality" not in manifest and "removed" not in manifest["counters"]
    assert not (tmp_path / "plain" / "_quality").exists()
    # And a manifest recorded before the key existed is the same recipe.
    old = dict(manifest["config"])
    old.pop("quality")
    assert recipe_of(old) == recipe_of(cfg)


def test_filters_remove_and_count_per_filter(
    recipe: Callable[..., PrepareConfig], tmp_path: Path
) -> None:
    rng = random.Random(3)
    good = [paragraph(rng) + " and the end of it." for _ in range(30)]
    short = ["too short to keep", "also too short"]
    spam = [" ".join(["buy now"] * 40)]
    src = tmp_path / "mixed.txt"
    src.write_text("\n\n".join(good[:10] + short + good[10:20] + spam + good[20:]) + "\n")
    cfg = quality_recipe(
        recipe,
        [str(src)],
        tmp_path / "out",
        quality={
            "filters": [
                {"name": "length", "params": {"min_words": 10}},
                {"name": "gopher_repetition"},
            ],
        },
    )
    prepare(cfg, workers=2, keep_rejected=str(tmp_path / "rejected"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["counters"]["removed"] == {"gopher_repetition": 1, "length": 2}
    assert manifest["counters"]["removed_bytes"]["length"] == sum(map(len, short))
    assert manifest["quality"]["filter_heuristics"] == {
        "gopher_repetition:top_2gram_frac": 1,
        "length:min_words": 2,
    }
    rejected = kept_texts(tmp_path, tmp_path / "rejected")
    assert sorted((r["reason"], r["text"]) for r in rejected) == sorted(
        [("gopher_repetition:top_2gram_frac", spam[0])] + [("length:min_words", t) for t in short]
    )
    splits = manifest["splits"]
    assert splits["train"]["documents"] + splits["validation"]["documents"] == 30


def test_unknown_filter_or_parameter_is_a_config_error(
    recipe: Callable[..., PrepareConfig],
) -> None:
    with pytest.raises(ConfigError, match="no parameter 'min_word'"):
        recipe(quality={"filters": [{"name": "length", "params": {"min_word": 3}}]})
    with pytest.raises(ConfigError, match="must be one of"):
        recipe(quality={"filters": [{"name": "c4"}]})
    with pytest.raises(ConfigError, match="each filter may appear once"):
        recipe(quality={"filters": [{"name": "length"}, {"name": "length"}]})


# -- each filter on hand-made documents ------------------------------------------------------
PROSE = (
    "The committee met on Tuesday to discuss the budget for the coming year. Members agreed "
    "that the library needs new shelves and that the roof of the town hall has to be repaired "
    "before winter. The treasurer said the reserves would cover both projects, but warned that "
    "the cost of heating had risen sharply and asked everyone to keep that in mind with the "
    "plans for next spring."
)


NEWSLETTER = (
    "click here to subscribe to our weekly newsletter and get the best offers delivered to "
    "your inbox"
)


def verdict(name: str, text: str, **params: Any) -> str | None:
    return build_filter(name, params)(text)


def test_length_filter() -> None:
    assert verdict("length", PROSE, min_bytes=100, max_bytes=10_000) is None
    assert verdict("length", PROSE, min_bytes=10_000) == "min_bytes"
    assert verdict("length", PROSE, max_bytes=100) == "max_bytes"
    assert verdict("length", PROSE, min_words=10, max_words=200) is None
    assert verdict("length", "two words", min_words=3) == "min_words"
    assert verdict("length", PROSE, max_words=20) == "max_words"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PROSE, None),
        ("The cat sat with the dog.", "min_words"),
        (" ".join(["a", "of", "the", "is", "to"] * 20), "min_mean_word_length"),
        (
            " ".join(["internationalisation", "characteristically", "the", "with"] * 20),
            "max_mean_word_length",
        ),
        (PROSE + " #tag" * 10, "symbol_word_ratio"),
        ("\n".join(f"- the {w} item of the list with words" for w in WORDS[:12]), None),
        (
            "\n".join(f"\u2022 the {w} item of the list with words" for w in WORDS[:12]),
            "bullet_lines_ratio",
        ),
        (
            "\n".join(
                f"and then the story of the {w} went on and on and on for years..."
                for w in WORDS[:12]
            ),
            "ellipsis_lines_ratio",
        ),
        (" ".join(["1234", "5678", "%%%%", "the", "with"] * 20), "non_alpha_words_ratio"),
        (" ".join(["lorem", "ipsum", "dolor", "amet"] * 20), "stop_words"),
    ],
)
def test_gopher_quality_filter(text: str, expected: str | None) -> None:
    # A list of 12 bullet lines fails (12 of 12 > 0.9); "- " lines are bullets too, so that
    # case allows max_bullet_lines_ratio=1 to show what passes when a recipe allows lists.
    params = {"max_bullet_lines_ratio": 1.0} if text.startswith("- ") else {}
    assert verdict("gopher_quality", text, **params) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PROSE, None),
        (PROSE + "\n\n" + PROSE + "\n\n" + PROSE, "dup_para_frac"),
        (
            "\n".join(["Home", "Contact us", "Home", "Home", "About", "Home"]) + "\n" + PROSE,
            "dup_line_frac",
        ),
        (
            "\n".join(
                [*PROSE.split(". "), "Minutes were taken.", "It closed at nine.", *[NEWSLETTER] * 3]
            ),
            "dup_line_char_frac",
        ),
        (PROSE + " " + " ".join(["best price"] * 30), "top_2gram_frac"),
        (PROSE + " " + " ".join(f"w{i % 12}" for i in range(120)), "dup_5gram_frac"),
    ],
)
def test_gopher_repetition_filter(text: str, expected: str | None) -> None:
    assert verdict("gopher_repetition", text) == expected


def test_language_filter() -> None:
    german = (
        "Der Ausschuss traf sich am Dienstag, um den Haushalt für das kommende Jahr zu "
        "besprechen. Die Mitglieder waren sich einig, dass die Bibliothek neue Regale braucht."
    )
    assert verdict("language", PROSE) is None
    assert verdict("language", german) == "language_de"
    assert verdict("language", german, languages=["en", "de"]) is None
    assert verdict("language", PROSE, languages=["de"]) == "language_en"
    with pytest.raises(ValueError, match="unknown language"):
        build_filter("language", {"languages": ["xx"]})


def test_normalise_ignores_case_punctuation_and_spacing() -> None:
    assert normalise("Hello,  World!\n") == normalise("hello world") == "hello world"
    assert normalise("ﬁne") == "fine"  # NFKC


# -- a SIGKILL during a stage ------------------------------------------------------------------
def test_sigkill_during_scan_then_rerun_is_byte_identical(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    reference = quality_recipe(recipe, paths, tmp_path / "ref")
    prepare(reference, workers=1)
    cfg = quality_recipe(recipe, paths, tmp_path / "out")
    config = tmp_path / "recipe.yaml"
    from data_pipeline.configuration import to_yaml

    config.write_text(to_yaml(cfg))
    proc = subprocess.Popen(
        cli("quality", str(config), "--stage", "scan", "--workers", "1", "-q"),
        env=cli_env(),
    )
    scans = tmp_path / "out" / "_quality" / "scan"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if scans.is_dir() and any(scans.glob("*.npz")):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    prepare(cfg, workers=2)
    assert shard_bytes(cfg.output) == shard_bytes(reference.output)
    assert (
        json.loads((tmp_path / "out" / "manifest.json").read_text())["counters"]
        == json.loads((tmp_path / "ref" / "manifest.json").read_text())["counters"]
    )


def test_from_dict_accepts_a_full_quality_section(recipe: Callable[..., PrepareConfig]) -> None:
    cfg = from_dict(
        PrepareConfig,
        {
            "name": "x",
            "output": "o",
            "tokenizer": "t",
            "source": {"paths": ["a"]},
            "quality": {
                "filters": [
                    {"name": "length", "params": {"min_bytes": 200}},
                    {"name": "gopher_quality", "params": {"min_words": 30}},
                    {"name": "language", "params": {"languages": ["en"], "min_score": 0.5}},
                ],
                "exact_dedup": True,
                "minhash": {"enabled": True, "bands": 9, "rows": 13},
            },
        },
    )
    assert cfg.quality.minhash.num_perm == 117 and cfg.quality.enabled


def test_input_changed_after_the_scan_is_an_error(
    recipe: Callable[..., PrepareConfig],
    dup_corpus: tuple[list[str], dict[str, str]],
    tmp_path: Path,
) -> None:
    paths, _ = dup_corpus
    cfg = quality_recipe(recipe, paths, tmp_path / "out")
    scan(cfg)
    buckets(cfg)
    clusters(cfg)
    # Same size, one paragraph more: the removals' document numbers no longer fit.
    text = Path(paths[0]).read_text()
    at = text.index("s ")
    Path(paths[0]).write_text(text[:at] + "\n\n" + text[at + 2 :])
    with pytest.raises(RuntimeError, match="the input changed since"):
        prepare(cfg, workers=1)


def test_language_id_and_minhash_run_without_torch() -> None:
    """py3langid and datasketch (imported only when used) need no torch either."""
    from tests.test_import_without_torch import REPO_ROOT, SCRIPT

    script = SCRIPT + (
        "from data_pipeline.quality import Signer, normalise\n"
        "from data_pipeline.quality_filters import build_filter\n"
        "from data_pipeline.schemas import MinHashConfig\n"
        "assert build_filter('language', {})('This is plainly an English sentence.') is None\n"
        "assert Signer(MinHashConfig(enabled=True)).sign(normalise('a b c d e f g')) is not None\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
