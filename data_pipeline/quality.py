"""Corpus-wide quality stages, run before the units are prepared: filters, global exact dedup and
MinHash near-dedup. Each stage scales like prepare (independent tasks, each resumable) and its
result is a function of the corpus and the recipe only, never of worker or task counts:

1. ``scan`` (per unit; unit i belongs to task i % num_tasks): read the unit's documents exactly
   as prepare will (same reader, so document d of unit u is the same text), run the filters,
   and record per document its verdict, normalised content hash, split side and MinHash
   signature: ``_quality/scan/{unit:05d}.npz``.
2. ``buckets`` (per LSH band; band b belongs to task b % num_tasks): group the documents that
   agree on the band's rows; link each to the first earlier member (corpus order) whose
   signature agrees on at least ``threshold`` of the permutations: ``_quality/buckets/{b}.npy``.
3. ``clusters`` (one task): exact duplicates first (same normalised hash: the first copy is
   kept), then union-find over the band links; each cluster keeps its first member. Writes
   ``_quality/removals/{unit:05d}.json`` (document, reason, kept copy) for every unit and, last,
   ``_quality/summary.json`` (counts and bytes per filter and stage, cluster sizes): the marker
   that the stages are done.

Corpus order is (validation first, unit, document), so a document present on both sides of the
split survives in validation and its training copies go. Prepare then drops the removed
documents of each unit before the split (`unit_job.run_unit`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing as mp
import re
import unicodedata
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import chain
from typing import Any

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from data_pipeline.progress import Progress
from data_pipeline.quality_filters import FilterChain
from data_pipeline.readers import UnitReader
from data_pipeline.schemas import MinHashConfig, PrepareConfig
from data_pipeline.storage import Output, json_bytes
from data_pipeline.units import WorkUnit, plan_units

logger = logging.getLogger(__name__)

QUALITY_DIR = "_quality"
SUMMARY = f"{QUALITY_DIR}/summary.json"
RECIPE = f"{QUALITY_DIR}/recipe.json"
MAX_LINKS = 8  # earlier bucket members a document is compared with (verify)
SHINGLE_BATCH = 4096  # shingles (or pairs) handled at a time: bounds memory

_NOT_WORD = re.compile(r"[^\w\s]+")
# For ASCII text: what _NOT_WORD matches (neither \w nor \s) becomes a space.
_ASCII_NOT_WORD = {
    c: " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())
}


def scan_name(unit: int) -> str:
    return f"{QUALITY_DIR}/scan/{unit:05d}.npz"


def bucket_name(band: int) -> str:
    return f"{QUALITY_DIR}/buckets/{band:04d}.npy"


def removals_name(unit: int) -> str:
    return f"{QUALITY_DIR}/removals/{unit:05d}.json"


def normalise(text: str) -> str:
    """What two copies of a document share after trivial edits: NFKC, case folded, punctuation
    and symbols removed, whitespace runs made one space."""
    if text.isascii():  # the same result, several times faster
        return " ".join(text.lower().translate(_ASCII_NOT_WORD).split())
    text = _NOT_WORD.sub(" ", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(text.split())


def content_hash(normalised: str) -> bytes:
    return hashlib.blake2b(normalised.encode("utf-8"), digest_size=16).digest()


def shingles(normalised: str, kind: str, size: int) -> Iterator[bytes]:
    """Word or character n-grams of the normalised text (a text shorter than one shingle is one
    shingle; an empty one has none). What `Signer` hashes (it hashes word shingles from word
    hashes without building these strings: same sets, other values)."""
    if kind == "words":
        words = normalised.split()
        if 0 < len(words) <= size:
            yield " ".join(words).encode("utf-8")
            return
        for i in range(len(words) - size + 1):
            yield " ".join(words[i : i + size]).encode("utf-8")
    else:
        if 0 < len(normalised) <= size:
            yield normalised.encode("utf-8")
            return
        for i in range(len(normalised) - size + 1):
            yield normalised[i : i + size].encode("utf-8")


_MIX = np.uint64(0x9E3779B97F4A7C15)
_LOW32 = np.uint64(0xFFFFFFFF)
EMPTY = 0xFFFFFFFF  # datasketch's initial (and "no shingle") value of every permutation


def _identity(value: int) -> int:
    return value


def _fmix32(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser: datasketch's pre-mix of every input value under the
    affine32 scheme (a test checks the signatures against datasketch's own)."""
    values = values ^ (values >> np.uint32(16))
    values = values * np.uint32(0x85EBCA6B)
    values = values ^ (values >> np.uint32(13))
    values = values * np.uint32(0xC2B2AE35)
    return values ^ (values >> np.uint32(16))


class Signer:
    """MinHash signatures of many documents at once, equal to datasketch's
    (``MinHash(scheme="affine32")`` fed each document's shingle values; tested): the
    permutations are datasketch's (its seeded ``a``, ``b``), applied with numpy to every
    shingle of a batch of documents in one pass and reduced per document, instead of one
    ``update_batch`` per document with its Python call per value.

    Word shingles are hashed without building their strings: each word's CRC-32 (zlib, called
    from C over the word list: no Python per word), mixed with numpy into one 64-bit value per
    n-gram and folded to 32 bits; datasketch takes those through an identity hash function
    (its affine32 scheme pre-mixes inputs with MurmurHash3's finaliser, as its documentation
    asks for structured values). The pre-mix and the 64-bit mixing make up for CRC's
    linearity; two words sharing a CRC (about one pair in a 100k-word vocabulary) only merge
    two shingles. Character shingles use datasketch's default SHA-1 of each shingle."""

    def __init__(self, cfg: MinHashConfig) -> None:
        from datasketch import MinHash
        from datasketch.hashfunc import sha1_hash32

        self.cfg = cfg
        self.sha1_hash32 = sha1_hash32
        words = cfg.shingle == "words"
        self.minhash = MinHash(
            num_perm=cfg.num_perm,
            seed=cfg.seed,
            scheme="affine32",
            hashfunc=_identity if words else None,
        )
        a, b = self.minhash.permutations
        self.a = np.asarray(a, dtype=np.uint32)
        self.b = np.asarray(b, dtype=np.uint32)

    def values(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(the uint32 value datasketch hashes for each shingle of each normalised document,
        the document's index in ``documents``), in document order."""
        if self.cfg.shingle == "words":
            return self._word_values(documents)
        values: list[int] = []
        owners: list[int] = []
        for d, text in enumerate(documents):
            before = len(values)
            values.extend(map(self.sha1_hash32, shingles(text, "chars", self.cfg.shingle_size)))
            owners.extend([d] * (len(values) - before))
        return np.array(values, dtype=np.uint32), np.array(owners, dtype=np.int64)

    def _word_values(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        size = self.cfg.shingle_size
        # `normalise` left single spaces, so a split on " " gives the words.
        split = [text.split(" ") if text else [] for text in documents]
        counts = np.fromiter(map(len, split), dtype=np.int64, count=len(split))
        total = int(counts.sum())
        words = np.fromiter(
            map(zlib.crc32, map(str.encode, chain.from_iterable(split))), np.uint64, total
        )
        starts = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64)
        # n-grams of the concatenation; those crossing a document's end are dropped below.
        keys = np.zeros(max(total - size + 1, 0), dtype=np.uint64)
        for k in range(size):
            keys = keys * _MIX + words[k : k + len(keys)]
        owner = np.repeat(np.arange(len(documents), dtype=np.int64), counts)[: len(keys)]
        inside = np.arange(len(keys)) - starts[owner] <= counts[owner] - size
        keys, owner = keys[inside], owner[inside]
        # A document shorter than a shingle is one shingle of all its words.
        short = np.flatnonzero((counts > 0) & (counts < size))
        if len(short):
            extra = np.zeros(len(short), dtype=np.uint64)
            for i, d in enumerate(short.tolist()):
                value = np.zeros(1, dtype=np.uint64)
                for k in range(int(counts[d])):
                    value = value * _MIX + words[starts[d] + k : starts[d] + k + 1]
                extra[i] = value[0]
            keys = np.concatenate([keys, extra])
            owner = np.concatenate([owner, short])
            order = np.argsort(owner, kind="stable")
            keys, owner = keys[order], owner[order]
        folded = ((keys ^ (keys >> np.uint64(32))) & _LOW32).astype(np.uint32)
        return folded, owner

    def sign_many(self, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(signatures, one row per document, uint32; whether the document had a shingle:
        a row without one is all `EMPTY`)."""
        values, owner = self.values(documents)
        # Permutation-major (num_perm x documents), so that each block's per-document minimum
        # runs along contiguous memory (~2.5x faster than shingle-major); blocks of
        # SHINGLE_BATCH shingles bound memory (~SHINGLE_BATCH x num_perm x 4 bytes).
        sigs = np.full((len(self.a), len(documents)), EMPTY, dtype=np.uint32)
        mixed = _fmix32(values)
        a, b = self.a[:, None], self.b[:, None]
        for lo in range(0, len(mixed), SHINGLE_BATCH):
            hi = min(lo + SHINGLE_BATCH, len(mixed))
            block = a * mixed[lo:hi]  # uint32: wraps around, as datasketch's does
            block += b
            seg = np.flatnonzero(np.r_[True, owner[lo + 1 : hi] != owner[lo : hi - 1]])
            docs = owner[lo + seg]
            sigs[:, docs] = np.minimum(sigs[:, docs], np.minimum.reduceat(block, seg, axis=1))
        signed = np.zeros(len(documents), dtype=bool)
        signed[owner] = True
        return np.ascontiguousarray(sigs.T), signed

    def sign(self, normalised: str) -> np.ndarray | None:
        """One document's signature (None: it has no shingle)."""
        sigs, signed = self.sign_many([normalised])
        return sigs[0] if signed[0] else None


def quality_hash(cfg: PrepareConfig) -> str:
    from data_pipeline.prepare import recipe

    return hashlib.sha256(json_bytes({"config": recipe(cfg)})).hexdigest()


def check_quality_output(out: Output, cfg: PrepareConfig) -> None:
    """Refuse stage files of another recipe (as prepare refuses another recipe's markers)."""
    if out.exists(RECIPE) and out.read_json(RECIPE).get("hash") != quality_hash(cfg):
        from data_pipeline.prepare import OutputConflictError

        raise OutputConflictError(
            f"{out.url}: {RECIPE} comes from a different config; choose another output or delete it"
        )


# -- stage 1: scan ------------------------------------------------------------------------
_CHAINS: dict[str, FilterChain] = {}  # per process: the language model loads once


def _chain(cfg: PrepareConfig) -> FilterChain:
    specs = [(f.name, f.params) for f in cfg.quality.filters]
    key = repr(specs)
    if key not in _CHAINS:
        _CHAINS[key] = FilterChain(specs)
    return _CHAINS[key]


def scan_unit(unit: WorkUnit, cfg: PrepareConfig) -> dict[str, np.ndarray]:
    """Per document of ``unit``: verdict, normalised hash, bytes, validation side, signature."""
    from data_pipeline.unit_job import _hash_splitter

    chain = _chain(cfg)
    q = cfg.quality
    signer = Signer(q.minhash) if q.minhash.enabled else None
    is_validation = _hash_splitter(cfg.split.salt.encode("utf-8"), cfg.split.validation_fraction)
    rejected: list[str] = []
    hashes: list[bytes] = []
    nbytes: list[int] = []
    validation: list[bool] = []
    kept: list[int] = []  # documents the filters kept: they are hashed and signed
    norms: list[str] = []
    for doc in UnitReader(unit, cfg.source).documents():
        text = doc.text
        verdict = chain.reject(text) if chain.filters else None
        rejected.append("" if verdict is None else f"{chain.names[verdict[0]]}:{verdict[1]}")
        nbytes.append(doc.nbytes)
        if unit.split is not None:
            validation.append(unit.split == "validation")
        else:
            validation.append(is_validation(doc.utf8))
        if verdict is not None:
            hashes.append(bytes(16))
            continue
        norm = normalise(text)
        hashes.append(content_hash(norm))
        kept.append(len(nbytes) - 1)
        norms.append(norm)
    n = len(nbytes)
    signature = np.full((n, q.minhash.num_perm if signer else 0), EMPTY, dtype=np.uint32)
    signed = np.zeros(n, dtype=bool)
    if signer is not None and norms:
        # One pass over the unit's shingles (the signer vectorises across documents).
        signature[kept], signed[kept] = signer.sign_many(norms)
    return {
        "rejected": np.array(rejected, dtype=str) if n else np.zeros(0, dtype="<U1"),
        "hash": np.frombuffer(b"".join(hashes), dtype=np.uint8).reshape(n, 16),
        "nbytes": np.array(nbytes, dtype=np.int64),
        "validation": np.array(validation, dtype=bool),
        "signed": signed,
        "signature": signature,
    }


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _read_npz(out: Output, name: str, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of one scan file (an npz member is decoded only when asked for)."""
    with np.load(io.BytesIO(out.read_bytes(name)), allow_pickle=False) as data:
        return {key: data[key] for key in keys}


def _scan_job(unit: WorkUnit, cfg: PrepareConfig, out: Output) -> tuple[int, int]:
    arrays = scan_unit(unit, cfg)
    out.commit(scan_name(unit.index), _npz_bytes(arrays))
    return len(arrays["nbytes"]), int(arrays["nbytes"].sum())


def scan(cfg: PrepareConfig, *, workers: int = 1, num_tasks: int = 1, task_index: int = 0) -> int:
    """Scan this task's units that have no scan file yet; returns how many were scanned."""
    out = Output(cfg.output, cfg.storage_options)
    check_quality_output(out, cfg)
    if not out.exists(RECIPE):
        out.commit(RECIPE, json_bytes({"hash": quality_hash(cfg)}))
    units = [u for u in plan_units(cfg) if u.index % num_tasks == task_index]
    done = set(out.list(f"{QUALITY_DIR}/scan"))
    todo = [u for u in units if scan_name(u.index) not in done]
    logger.info(
        "[quality scan] this task %d units, already scanned %d, to scan %d with %d worker(s)",
        len(units),
        len(units) - len(todo),
        len(todo),
        workers,
    )
    progress = Progress("quality scan", len(todo))
    if workers > 1 and len(todo) > 1:
        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(todo)), mp_context=ctx) as pool:
            futures = [pool.submit(_scan_job, u, cfg, out) for u in todo]
            for future in futures:
                docs, size = future.result()
                progress.add(documents=docs, bytes_in=size, units=1)
    else:
        for u in todo:
            docs, size = _scan_job(u, cfg, out)
            progress.add(documents=docs, bytes_in=size, units=1)
    return len(todo)


# -- stage 2: buckets ---------------------------------------------------------------------
def _check_scanned(out: Output, units: list[WorkUnit]) -> None:
    missing = [u.index for u in units if not out.exists(scan_name(u.index))]
    if missing:
        raise RuntimeError(
            f"{out.url}: {len(missing)} of {len(units)} units are not scanned yet (first: "
            f"{missing[:5]}); run every `data-pipeline quality --stage scan` task first"
        )


def _scans(out: Output, units: list[WorkUnit], keys: tuple[str, ...]) -> Iterator[dict[str, Any]]:
    """Unit by unit, the arrays ``keys`` of its scan file: a stage holds what it keeps of each
    unit, never every unit's whole scan."""
    _check_scanned(out, units)
    for u in units:
        yield _read_npz(out, scan_name(u.index), keys)


def _order(validation: np.ndarray) -> np.ndarray:
    """Rank of each document (global id) in corpus order: validation first, then (unit, doc)."""
    ids = np.arange(len(validation))
    order = np.lexsort((ids, ~validation))  # False (validation) sorts first
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank


def band_buckets(
    rows: np.ndarray, ids: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The buckets of one band with two members or more: documents ``ids`` whose signatures
    agree on every one of the band's ``rows``. Returns (their members, bucket after bucket,
    each in corpus order; where each member's bucket starts in that array)."""
    if len(ids) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.shape[1] * rows.itemsize))).ravel()
    _, bucket = np.unique(keys, return_inverse=True)
    order = np.lexsort((rank[ids], bucket))  # by bucket, then corpus order
    sorted_bucket = bucket[order]
    starts = np.flatnonzero(np.r_[True, sorted_bucket[1:] != sorted_bucket[:-1]])
    sizes = np.diff(np.r_[starts, len(order)])
    shared = np.repeat(sizes >= 2, sizes)
    start_of = np.repeat(starts, sizes)[shared]
    members = ids[order[shared]]
    # Re-base the starts on the kept (shared) entries.
    kept_before = np.cumsum(shared) - shared
    return members, kept_before[start_of]


def band_links(
    members: np.ndarray, start_of: np.ndarray, signatures: np.ndarray, cfg: MinHashConfig
) -> np.ndarray:
    """Links (earlier, later) of one band's buckets (`band_buckets`): each later member linked
    to the first earlier one (corpus order, among the bucket's first `MAX_LINKS`) whose
    signature agrees on at least ``threshold`` of the permutations (with ``verify``; without,
    to the bucket's first). ``signatures``: one row per member. Vectorised over every
    (earlier, later) pair of the band at once."""
    position = np.arange(len(members)) - start_of  # within the bucket
    later = np.flatnonzero(position > 0)
    if not cfg.verify:
        return np.stack([members[start_of[later]], members[later]], axis=1).astype(np.int64)
    tries = np.minimum(position[later], MAX_LINKS)
    pair_later = np.repeat(later, tries)
    nth = np.arange(len(pair_later)) - np.repeat(np.cumsum(tries) - tries, tries)
    pair_earlier = start_of[pair_later] + nth
    need = int(np.ceil(cfg.threshold * cfg.num_perm - 1e-9))
    agree = np.zeros(len(pair_later), dtype=np.int64)
    for lo in range(0, len(pair_later), SHINGLE_BATCH):
        e, l_ = pair_earlier[lo : lo + SHINGLE_BATCH], pair_later[lo : lo + SHINGLE_BATCH]
        agree[lo : lo + SHINGLE_BATCH] = np.count_nonzero(signatures[e] == signatures[l_], axis=1)
    ok = np.flatnonzero(agree >= need)
    # Pairs run by later member, earlier ones in corpus order: the first that agrees wins.
    _, first = np.unique(pair_later[ok], return_index=True)
    chosen = ok[first]
    return np.stack([members[pair_earlier[chosen]], members[pair_later[chosen]]], axis=1).astype(
        np.int64
    )


def buckets(cfg: PrepareConfig, *, num_tasks: int = 1, task_index: int = 0) -> int:
    """Link candidate pairs of this task's bands that have no file yet; returns bands done.

    Memory: per document, only this task's bands' rows (4 bytes x rows each) and its split
    side; whole signatures only of the documents that share a bucket (read in a second pass),
    which verification compares."""
    mh = cfg.quality.minhash
    if not mh.enabled:
        return 0
    out = Output(cfg.output, cfg.storage_options)
    check_quality_output(out, cfg)
    bands = [b for b in range(mh.bands) if b % num_tasks == task_index]
    done = set(out.list(f"{QUALITY_DIR}/buckets"))
    todo = [b for b in bands if bucket_name(b) not in done]
    logger.info("[quality buckets] this task %d bands, to link %d", len(bands), len(todo))
    if not todo:
        return 0
    units = plan_units(cfg)
    columns = np.concatenate([np.arange(b * mh.rows, (b + 1) * mh.rows) for b in todo])
    rows: list[np.ndarray] = []
    ids: list[np.ndarray] = []
    sides: list[np.ndarray] = []
    offset = 0
    for arrays in _scans(out, units, ("signed", "signature", "validation")):
        signed = np.flatnonzero(arrays["signed"])
        rows.append(arrays["signature"][signed][:, columns])
        ids.append(signed + offset)
        sides.append(arrays["validation"])
        offset += len(arrays["validation"])
    band_rows = np.concatenate(rows) if rows else np.zeros((0, len(columns)), np.uint32)
    signed_ids = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    rank = _order(np.concatenate(sides) if sides else np.zeros(0, bool))
    del rows, ids, sides
    groups = {
        b: band_buckets(band_rows[:, k * mh.rows : (k + 1) * mh.rows], signed_ids, rank)
        for k, b in enumerate(todo)
    }
    del band_rows
    candidates = np.unique(np.concatenate([m for m, _ in groups.values()] or [np.zeros(0, int)]))
    signatures = (
        _signatures_of(out, units, candidates)
        if mh.verify
        else np.zeros((len(candidates), 0), np.uint32)
    )
    for b in todo:
        members, start_of = groups[b]
        rows_of = signatures[np.searchsorted(candidates, members)]
        buf = io.BytesIO()
        np.save(buf, band_links(members, start_of, rows_of, mh).reshape(-1, 2))
        out.commit(bucket_name(b), buf.getvalue())
    return len(todo)


def _signatures_of(out: Output, units: list[WorkUnit], docs: np.ndarray) -> np.ndarray:
    """Whole signatures of the documents ``docs`` (sorted global ids), in that order."""
    found: list[np.ndarray] = []
    offset = 0
    for arrays in _scans(out, units, ("signature",)):
        n = len(arrays["signature"])
        mine = docs[(docs >= offset) & (docs < offset + n)]
        found.append(arrays["signature"][mine - offset])
        offset += n
    return np.concatenate(found) if found else np.zeros((0, 0), np.uint32)


# -- stage 3: clusters --------------------------------------------------------------------
def clusters(cfg: PrepareConfig) -> dict[str, Any]:
    """Decide every removal; write the per-unit removal lists, then the summary (last)."""
    out = Output(cfg.output, cfg.storage_options)
    check_quality_output(out, cfg)
    if out.exists(SUMMARY):
        summary: dict[str, Any] = out.read_json(SUMMARY)
        return summary
    q = cfg.quality
    units = plan_units(cfg)
    # No signatures here, and verdicts as small integer codes: per document a hash, a size, a
    # side, a verdict and a reason (~50 bytes with the rank, keeper and cluster label).
    verdicts: dict[str, int] = {"": 0}  # verdict ("filter:heuristic", "" kept) -> code
    parts: dict[str, list[np.ndarray]] = {"code": [], "hash": [], "nbytes": [], "validation": []}
    for arrays in _scans(out, units, ("rejected", "hash", "nbytes", "validation")):
        names, inverse = np.unique(arrays["rejected"].astype(str), return_inverse=True)
        lookup = np.array([verdicts.setdefault(str(v), len(verdicts)) for v in names], np.int32)
        parts["code"].append(lookup[inverse.reshape(-1)] if len(names) else np.zeros(0, np.int32))
        for key in ("hash", "nbytes", "validation"):
            parts[key].append(arrays[key])
    counts = [len(n) for n in parts["nbytes"]]
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int64)
    unit_of = np.repeat(np.arange(len(units)), counts)
    code = np.concatenate(parts["code"]) if counts else np.zeros(0, np.int32)
    nbytes = np.concatenate(parts["nbytes"]) if counts else np.zeros(0, np.int64)
    total = len(nbytes)
    rank = _order(np.concatenate(parts["validation"]) if counts else np.zeros(0, bool))
    verdict_of = list(verdicts)  # code -> verdict
    # Reasons: "" (kept), each filter, then the two dedup stages.
    reasons = list(dict.fromkeys(["", *(v.split(":", 1)[0] for v in verdict_of[1:])]))
    exact_code, near_code = len(reasons), len(reasons) + 1
    reasons += ["exact_duplicate", "near_duplicate"]
    reason_of = np.array([reasons.index(v.split(":", 1)[0]) for v in verdict_of], np.int16)
    reason = reason_of[code]
    keeper = np.full(total, -1, dtype=np.int64)
    alive = code == 0
    if q.exact_dedup and total:
        hashes = np.concatenate(parts["hash"]).view(np.dtype((np.void, 16))).ravel()
        ids = np.flatnonzero(alive)
        order = ids[np.lexsort((rank[ids], hashes[ids]))]
        same = np.r_[False, hashes[order[1:]] == hashes[order[:-1]]]
        # The first copy of each run of equal hashes is its keeper.
        run_start = np.maximum.accumulate(np.where(same, 0, np.arange(len(order))))
        dup = order[same]
        reason[dup] = exact_code
        keeper[dup] = order[run_start][same]
        alive[dup] = False
    sizes: Counter[int] = Counter()
    if q.minhash.enabled and total:
        missing = [b for b in range(q.minhash.bands) if not out.exists(bucket_name(b))]
        if missing:
            raise RuntimeError(
                f"{out.url}: {len(missing)} of {q.minhash.bands} LSH bands are not linked yet "
                f"(first: {missing[:5]}); run every `data-pipeline quality --stage buckets` task"
            )
        links = [
            np.load(io.BytesIO(out.read_bytes(bucket_name(b))), allow_pickle=False)
            for b in range(q.minhash.bands)
        ]
        edges = np.concatenate(links) if links else np.zeros((0, 2), dtype=np.int64)
        # Union-find over the links of every band: connected components of the link graph.
        graph = coo_matrix(
            (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(total, total)
        )
        _, label = connected_components(graph, directed=False)
        # Each cluster keeps its first member (corpus order) that survived filters and exact
        # dedup; its other survivors are near duplicates.
        ids = np.flatnonzero(alive)
        ids = ids[np.lexsort((rank[ids], label[ids]))]
        first = np.r_[True, label[ids[1:]] != label[ids[:-1]]]
        run_start = np.maximum.accumulate(np.where(first, np.arange(len(ids)), 0))
        dup = ids[~first]
        reason[dup] = near_code
        keeper[dup] = ids[run_start][~first]
        alive[dup] = False
        sizes.update(Counter(Counter(label[ids].tolist()).values()))
        del sizes[1]
    removed: Counter[str] = Counter()
    removed_bytes: Counter[str] = Counter()
    heuristics: Counter[str] = Counter()
    for u, unit in enumerate(units):
        lo, hi = int(offsets[u]), int(offsets[u + 1])
        entries = []
        for i in (lo + np.flatnonzero(reason[lo:hi])).tolist():
            kept = int(keeper[i])
            kept_at = (
                [int(unit_of[kept]), kept - int(offsets[unit_of[kept]])] if kept >= 0 else None
            )
            why = reasons[reason[i]]
            entries.append([i - lo, verdict_of[code[i]] or why, kept_at])
            removed[why] += 1
            removed_bytes[why] += int(nbytes[i])
            if code[i]:
                heuristics[verdict_of[code[i]]] += 1
        removals = {"unit": unit.index, "documents": hi - lo, "removed": entries}
        out.commit(removals_name(unit.index), json_bytes(removals))
    summary = {
        "hash": quality_hash(cfg),
        "documents": total,
        "bytes": int(nbytes.sum()),
        "removed": dict(sorted(removed.items())),
        "removed_bytes": dict(sorted(removed_bytes.items())),
        "filter_heuristics": dict(sorted(heuristics.items())),
        "near_duplicate_clusters": sum(sizes.values()),
        "cluster_sizes": {str(k): v for k, v in sorted(sizes.items())},
    }
    out.commit(SUMMARY, json_bytes(summary))
    logger.info("[quality clusters] %s", describe(summary))
    return summary


def describe(summary: dict[str, Any]) -> str:
    parts = [
        f"{name} {summary['removed'][name]:,} ({summary['removed_bytes'][name]:,} B)"
        for name in summary["removed"]
    ]
    return (
        f"removed {', '.join(parts) or 'nothing'} of {summary['documents']:,} documents; "
        f"{summary['near_duplicate_clusters']:,} near-duplicate clusters"
    )


def run_stages(cfg: PrepareConfig, *, workers: int = 1) -> dict[str, Any]:
    """Every stage in one process (a single-task prepare): scan, buckets, clusters."""
    scan(cfg, workers=workers)
    buckets(cfg)
    return clusters(cfg)


def load_removals(out: Output, unit: int) -> tuple[int, dict[int, tuple[str, list[int] | None]]]:
    """(documents the scan read in ``unit``, document index -> (reason, [unit, document] of
    the copy kept))."""
    data = out.read_json(removals_name(unit))
    return int(data["documents"]), {int(d): (str(r), k) for d, r, k in data["removed"]}
