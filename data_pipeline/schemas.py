"""Typed config schemas of `data-pipeline`: where the text is, how to train a tokenizer and how
to prepare shards. Presets live in `configs/tokenizer/` (`TokenizerTrainingConfig`) and
`configs/data/` (`PrepareConfig`); `data_pipeline.configuration` loads them strictly."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SourceFormat = Literal["text", "jsonl", "parquet"]
TextMode = Literal["file", "paragraphs", "lines"]
TokenizerKind = Literal["sp_unigram", "sp_bpe", "sp_char", "hf_bpe", "hf_unigram", "hf_wordpiece"]
ErrorPolicy = Literal["skip", "fail"]
SplitMode = Literal["hash", "position", "files"]


@dataclass
class SourceConfig:
    """Input files: local paths, globs or any fsspec URL. Compression (.gz, .bz2, .xz, .zst) is
    inferred from the file name."""

    paths: list[str] = field(default_factory=list)
    format: SourceFormat = "text"
    # text: one document per file, documents separated by blank lines, or one per line.
    text_mode: TextMode = "file"
    text_field: str = "text"  # jsonl key / parquet column holding the document
    on_error: ErrorPolicy = "skip"  # bad input: skip and count by reason, or fail naming file:line
    max_document_bytes: int = 8 << 20  # longer documents (and lines) are bad input "too_long"
    # With on_error=skip, the run fails when more than this share of the input bytes was skipped
    # (or when nothing at all is left). Not part of the recipe: it decides whether a dataset is
    # accepted, not its bytes, so a rerun with a higher value finishes the same output.
    max_skipped_fraction: float = 0.01
    storage_options: dict[str, Any] = field(default_factory=dict)  # passed to fsspec

    def validate(self) -> None:
        if not self.paths:
            raise ValueError("paths must name at least one file, glob or URL")
        if self.max_document_bytes < 1:
            raise ValueError(f"max_document_bytes must be >= 1, got {self.max_document_bytes}")
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(
                f"max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}"
            )


@dataclass
class SpecialTokensConfig:
    """Special tokens every objective needs: causal LM (bos/eos/pad), MLM (mask), T5 (sentinels)."""

    pad: str = "<pad>"
    bos: str = "<s>"
    eos: str = "</s>"
    unk: str = "<unk>"
    mask: str = "<mask>"
    sentinel_format: str = "<extra_id_{}>"
    num_sentinels: int = 100

    def validate(self) -> None:
        if self.num_sentinels < 0:
            raise ValueError(f"num_sentinels must be >= 0, got {self.num_sentinels}")
        if "{}" not in self.sentinel_format:
            raise ValueError("sentinel_format must contain {} for the sentinel index")
        names = [self.pad, self.bos, self.eos, self.unk, self.mask]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"special tokens must be distinct and non-empty, got {names}")

    def sentinels(self) -> list[str]:
        return [self.sentinel_format.format(i) for i in range(self.num_sentinels)]


@dataclass
class SampleConfig:
    """Bounded-memory sample of the corpus for tokenizer training: documents are cut into items
    of at most ``item_chars`` (at line ends where possible) and a seeded reservoir keeps
    ``max_items`` of them across all inputs, so memory is at most max_items * item_chars."""

    max_items: int = 200_000
    item_chars: int = 4096
    seed: int = 0

    def validate(self) -> None:
        if self.max_items < 1 or self.item_chars < 16:
            raise ValueError("max_items must be >= 1 and item_chars >= 16")


@dataclass
class TokenizerTrainingConfig:
    """`data-pipeline train-tokenizer`: configs/tokenizer/*.yaml."""

    name: str
    output: str  # artifact directory (local path or fsspec URL)
    kind: TokenizerKind = "sp_unigram"
    vocab_size: int = 32000  # sp_char: ignored (the character set decides)
    source: SourceConfig = field(default_factory=SourceConfig)
    special_tokens: SpecialTokensConfig = field(default_factory=SpecialTokensConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    byte_fallback: bool = True  # unknown characters become UTF-8 byte tokens (sentencepiece)
    character_coverage: float = 1.0  # sentencepiece; < 1 maps the rarest characters to bytes
    split_digits: bool = True
    num_threads: int = 2

    def validate(self) -> None:
        if self.vocab_size < 64:
            raise ValueError(f"vocab_size must be >= 64, got {self.vocab_size}")
        if not 0.9 <= self.character_coverage <= 1.0:
            raise ValueError(
                f"character_coverage must be in [0.9, 1], got {self.character_coverage}"
            )
        if self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {self.num_threads}")


@dataclass
class SplitConfig:
    """Train/validation split. ``hash``: a document goes to validation when its content hash
    (salted) falls below ``validation_fraction`` (stable under reordering and reruns).
    ``position``: the first (1 - validation_fraction) of every input file's bytes is train, the
    rest validation, cut at the next line start (nanoGPT's split of a one-document corpus).
    ``files``: every document of the inputs that ``validation_paths`` names (paths or globs,
    each matching some of ``source.paths``) is validation, the rest train (a corpus that comes
    with its own held-out files, as WikiText's valid/test do)."""

    mode: SplitMode = "hash"
    validation_fraction: float = 0.01
    salt: str = ""
    validation_paths: list[str] = field(default_factory=list)

    def validate(self) -> None:
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )
        if self.mode == "files" and not self.validation_paths:
            raise ValueError("validation_paths: mode 'files' needs at least one path or glob")
        if self.mode != "files" and self.validation_paths:
            raise ValueError(
                f"validation_paths: only used with mode 'files' (mode is {self.mode!r})"
            )


FilterName = Literal["length", "gopher_quality", "gopher_repetition", "language"]
ShingleKind = Literal["words", "chars"]


@dataclass
class FilterConfig:
    """One quality filter of ``quality.filters``: its name and parameters over its defaults
    (`data_pipeline.quality_filters.DEFAULTS` lists them)."""

    name: FilterName
    params: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        from data_pipeline.quality_filters import check_params

        check_params(self.name, self.params)


@dataclass
class MinHashConfig:
    """Near-duplicate removal by MinHash LSH (datasketch's MinHash): documents are shingled
    (normalised words or characters, ``shingle_size`` long), signed with ``bands * rows``
    permutations, and two documents that agree on every row of some band are candidates; with
    ``verify`` a candidate is a duplicate only when its signatures agree on at least
    ``threshold`` of the permutations (estimated Jaccard similarity)."""

    enabled: bool = False
    threshold: float = 0.8
    shingle: ShingleKind = "words"
    shingle_size: int = 5
    bands: int = 16
    rows: int = 8
    seed: int = 1
    verify: bool = True

    def validate(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {self.threshold}")
        if self.shingle_size < 1 or self.bands < 1 or self.rows < 1:
            raise ValueError("shingle_size, bands and rows must be >= 1")

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


@dataclass
class QualityConfig:
    """Corpus quality, decided over the whole corpus before the split, in this order: the
    ``filters`` (first rejecting filter counts), then global exact dedup (normalised content
    hash; the first copy in corpus order is kept, validation documents first), then MinHash
    near-dedup. All off by default: recipes written before these keys existed are unchanged."""

    filters: list[FilterConfig] = field(default_factory=list)
    exact_dedup: bool = False
    minhash: MinHashConfig = field(default_factory=MinHashConfig)

    def validate(self) -> None:
        names = [f.name for f in self.filters]
        if len(set(names)) != len(names):
            raise ValueError(f"filters: each filter may appear once, got {names}")

    @property
    def enabled(self) -> bool:
        return bool(self.filters) or self.exact_dedup or self.minhash.enabled


@dataclass
class PrepareConfig:
    """`data-pipeline prepare`: configs/data/*.yaml. Everything here decides the output bytes;
    how many processes or machines produce them does not (those are command-line options)."""

    name: str
    output: str  # directory or URL prefix for shards, unit markers and manifest.json
    tokenizer: str  # tokenizer artifact directory (local path or URL)
    source: SourceConfig = field(default_factory=SourceConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    chunk_len: int = 512
    shard_bytes: int = 64 << 20  # target size of one tar shard
    unit_bytes: int = 64 << 20  # large uncompressed files are cut into line-aligned ranges
    dedup: bool = False  # drop exact duplicate documents (content hash) within a work unit
    encode_batch_documents: int = 256
    # Global filters and dedup (see QualityConfig): stages run before the units are prepared.
    quality: QualityConfig = field(default_factory=QualityConfig)
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for output

    def validate(self) -> None:
        if self.chunk_len < 2:
            raise ValueError(f"chunk_len must be >= 2, got {self.chunk_len}")
        if self.shard_bytes < 1024:
            raise ValueError(f"shard_bytes must be >= 1024, got {self.shard_bytes}")
        if self.unit_bytes < 4096:
            raise ValueError(f"unit_bytes must be >= 4096, got {self.unit_bytes}")
        if self.encode_batch_documents < 1:
            raise ValueError("encode_batch_documents must be >= 1")
