"""Every family x position scheme through ``--format hf``: the exported model loads with
transformers' Auto classes (our generated modelling code, trust_remote_code=True), gives our
logits on real text, carries Transformer-XL memory as its cache, and greedy ``generate()``
gives our tokens."""

from __future__ import annotations

import ast
import itertools
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import Activation, ModelConfig, Norm
from pretrain.export.hf import save_hf
from pretrain.export.package import ALLOWED_IMPORTS, package_files
from pretrain.generate.sampling import SamplingConfig, sample
from pretrain.model import Decoder, EncoderDecoder, LanguageModel, build_model, shift_right
from tests.conftest import REPO_ROOT

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")

VOCAB = 128  # byte-level ids of ASCII text
SPECIALS = {"pad": 0, "bos": 1, "eos": 2}
AUTO = {
    "decoder": "AutoModelForCausalLM",
    "encoder": "AutoModelForMaskedLM",
    "encoder_decoder": "AutoModelForSeq2SeqLM",
}
SCHEMES = [("learned", 0), ("rotary", 0), ("rotary", 16), ("relative", 16)]


def _text_ids(length: int, offset: int = 0) -> torch.Tensor:
    text = (REPO_ROOT / "corpora" / "tinyshakespeare").rglob("*")
    data = next(p for p in sorted(text) if p.is_file() and p.suffix != ".md").read_bytes()
    ids = torch.tensor(list(data[offset : offset + 2 * length]), dtype=torch.long) % VOCAB
    return ids.view(2, length)  # (2, length): two rows of real text


def _config(family: str, position: str, mem_len: int) -> ModelConfig:
    return ModelConfig(
        family=family,  # type: ignore[arg-type]
        vocab_size=VOCAB,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        position=position,  # type: ignore[arg-type]
        mem_len=mem_len,
    )


def _outputs(model: LanguageModel, tokens: torch.Tensor) -> torch.Tensor:
    if isinstance(model, EncoderDecoder):
        logits, _ = model(tokens, shift_right(tokens, SPECIALS["pad"]))
    else:
        logits, _ = model(tokens)
    return logits


def _trained(config: ModelConfig) -> LanguageModel:
    """A briefly trained model: a few Adam steps on real text (predicting the next byte, or the
    byte itself for the encoder), so the logits are not those of an initialisation."""
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    tokens = _text_ids(33)
    for _ in range(8):
        logits = _outputs(model, tokens[:, :-1])
        target = tokens[:, 1:] if isinstance(model, Decoder) else tokens[:, :-1]
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _export(model: LanguageModel, out: Path, **kwargs: Any) -> Any:
    assert save_hf(model.config, dict(model.state_dict()), out, special_ids=SPECIALS, **kwargs)
    auto = getattr(transformers, AUTO[model.config.family])
    return auto.from_pretrained(out, trust_remote_code=True).eval()


@pytest.mark.parametrize("family", list(AUTO))
@pytest.mark.parametrize(("position", "mem_len"), SCHEMES)
def test_every_family_and_scheme_loads_with_its_auto_class(
    tmp_path: Path, family: str, position: str, mem_len: int
) -> None:
    config = _config(family, position, mem_len)
    model = _trained(config)
    hf = _export(model, tmp_path)
    if family == "decoder" and position == "learned":
        assert type(hf).__name__ == "GPT2LMHeadModel"  # the exact mapping is kept
    else:
        assert type(hf).__module__.startswith("transformers_modules.")  # our code, from the export
        assert type(hf).__name__ == f"MnemosFor{AUTO[family].removeprefix('AutoModelFor')}"
    tokens = _text_ids(48, offset=1000)
    with torch.no_grad():
        expected = _outputs(model, tokens)
        if family == "encoder_decoder":
            decoder_input = shift_right(tokens, SPECIALS["pad"])
            got = hf(input_ids=tokens, decoder_input_ids=decoder_input).logits
        else:
            got = hf(tokens).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("family", list(AUTO))
@pytest.mark.parametrize("position", ["rotary", "relative"])
def test_memory_is_the_cache_segment_by_segment(tmp_path: Path, family: str, position: str) -> None:
    model = _trained(_config(family, position, 16))
    hf = _export(model, tmp_path)
    tokens = _text_ids(48, offset=3000)
    mems: list[torch.Tensor] | None = None
    cache = None
    with torch.no_grad():
        for segment in tokens.split(12, dim=1):  # memory carried across four segments
            if isinstance(model, EncoderDecoder):
                decoder_input = shift_right(segment, SPECIALS["pad"])
                expected, mems = model(segment, decoder_input, mems)
                out = hf(input_ids=segment, decoder_input_ids=decoder_input, cache=cache)
                got, cache = out.logits, out.encoder_cache
            else:
                expected, mems = model(segment, mems)
                out = hf(segment, cache=cache)
                got, cache = out.logits, out.cache
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert cache is not None and cache.seen == 48 and cache.mems[0].size(1) == 16


@pytest.mark.parametrize(("position", "mem_len"), SCHEMES)
def test_greedy_generate_gives_our_tokens_for_a_decoder(
    tmp_path: Path, position: str, mem_len: int
) -> None:
    model = _trained(_config("decoder", position, mem_len))
    assert isinstance(model, Decoder)
    hf = _export(model, tmp_path)
    prompt = _text_ids(8, offset=500)[:1]
    ours = sample(
        model, prompt, SamplingConfig(max_new_tokens=20, temperature=0.0, stop_id=SPECIALS["eos"])
    )
    with torch.no_grad():
        got = hf.generate(prompt, max_new_tokens=20, do_sample=False)
    assert got[0, prompt.size(1) :].tolist() == ours[0].tolist()


@pytest.mark.parametrize(("position", "mem_len"), [("learned", 0), ("relative", 16)])
def test_greedy_generate_gives_our_tokens_for_the_encoder_decoder(
    tmp_path: Path, position: str, mem_len: int
) -> None:
    model = _trained(_config("encoder_decoder", position, mem_len))
    assert isinstance(model, EncoderDecoder)
    hf = _export(model, tmp_path)
    source = _text_ids(24, offset=700)[:1]
    with torch.no_grad():  # ours: greedy over `decode`, the whole output so far each step
        encoded, _ = model.encode(source)
        output = torch.tensor([[SPECIALS["pad"]]])
        for _ in range(12):
            token = model.decode(output, encoded)[:, -1].argmax(-1, keepdim=True)
            output = torch.cat([output, token], dim=1)
            if token.item() == SPECIALS["eos"]:
                break
        got = hf.generate(source, max_new_tokens=12, do_sample=False)
    assert got.tolist() == output.tolist()


def test_bf16_export_and_a_sharded_export_load_back(tmp_path: Path) -> None:
    model = _trained(_config("decoder", "relative", 16))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hf = _export(model, tmp_path / "sharded", max_shard_size="20KB")
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1  # several shards
    loaded = hf.mnemos.state_dict()
    for name, tensor in state.items():
        assert torch.equal(loaded[name], tensor), name

    hf16 = _export(model, tmp_path / "bf16", dtype=torch.bfloat16)
    config = json.loads((tmp_path / "bf16" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    tokens = _text_ids(32)
    with torch.no_grad():
        expected = _outputs(model.to(torch.bfloat16), tokens)
        got = hf16.to(torch.bfloat16)(tokens).logits
    torch.testing.assert_close(got.float(), expected.float(), atol=1e-2, rtol=1e-2)


def test_the_modelling_package_needs_only_torch_and_transformers() -> None:
    files = package_files()
    assert {"modeling_mnemos.py", "configuration_mnemos.py", "mnemos_attention.py"} <= set(files)
    for name, source in files.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                assert node.module.split(".")[0] in ALLOWED_IMPORTS, (name, node.module)
    # The copies are pretrain/model's own text, imports aside: one source of truth.
    for module in ("positions", "attention", "layers", "blocks", "families"):
        copy = files[f"mnemos_{module}.py"].replace("from .mnemos_config ", "from pretrain.config ")
        copy = re.sub(r"from \.mnemos_(\w+) ", r"from pretrain.model.\1 ", copy)
        assert copy == (REPO_ROOT / "pretrain" / "model" / f"{module}.py").read_text()


@pytest.mark.parametrize("family", list(AUTO))
def test_no_family_scheme_or_variant_is_refused(tmp_path: Path, family: str) -> None:
    """Every position scheme x norm x activation x bias x tying of ``family`` exports, and
    the export names the Auto class that loads it; the mixed variants (no GPT-2 or Llama
    layout) load with it and give our logits."""
    tokens = _text_ids(24, offset=5000)
    variants = itertools.product(SCHEMES, get_args(Norm), get_args(Activation), (True, False))
    for index, ((position, mem_len), norm, activation, plain) in enumerate(variants):
        config = replace(
            _config(family, position, mem_len),
            norm=norm,
            activation=activation,
            bias=not plain,
            tie_embeddings=not plain,
        )
        out = tmp_path / str(index)
        arch = save_hf(config, dict(build_model(config).state_dict()), out, special_ids=SPECIALS)
        hf_config = json.loads((out / "config.json").read_text())
        if arch == "mnemos":
            assert AUTO[family] in hf_config["auto_map"]
        else:
            assert family == "decoder" and hf_config["model_type"] == arch
        if (norm, activation) == ("rmsnorm", "gelu") and position == "rotary" and not mem_len:
            torch.manual_seed(index)
            model = build_model(config).eval()
            hf = _export(model, tmp_path / f"{index}_loaded")
            with torch.no_grad():
                if family == "encoder_decoder":
                    decoder_input = shift_right(tokens, SPECIALS["pad"])
                    got = hf(input_ids=tokens, decoder_input_ids=decoder_input).logits
                else:
                    got = hf(tokens).logits
                torch.testing.assert_close(got, _outputs(model, tokens), atol=1e-4, rtol=1e-4)


def _right_padded(rows: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of ``rows`` padded on the right with the pad id."""
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), SPECIALS["pad"], dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return ids, mask


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder"])
@pytest.mark.parametrize(("position", "mem_len"), SCHEMES)
def test_a_padded_batch_gives_each_rows_own_logits(
    tmp_path: Path, family: str, position: str, mem_len: int
) -> None:
    """Encoders and encoder-decoders take transformers' attention_mask: in a right-padded batch
    each row's real tokens get the logits the row gets alone. Memory made over padding is
    refused when passed back."""
    model = _trained(_config(family, position, mem_len))
    hf = _export(model, tmp_path)
    long, short = _text_ids(24, offset=1500)[0], _text_ids(24, offset=1600)[0][:13]
    ids, mask = _right_padded([long, short])
    target = shift_right(_text_ids(10, offset=1700)[:1], SPECIALS["pad"])
    with torch.no_grad():

        def logits(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> Any:
            if family == "encoder_decoder":
                rows = target.expand(input_ids.size(0), -1)
                return hf(
                    input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=rows
                )
            return hf(input_ids, attention_mask=attention_mask)

        batch = logits(ids, mask)
        for i, row in enumerate([long, short]):
            alone = logits(row[None], None).logits[0]
            got = batch.logits[i] if family == "encoder_decoder" else batch.logits[i, : len(row)]
            torch.testing.assert_close(got, alone, atol=1e-4, rtol=1e-4)
        if mem_len:
            cache = batch.encoder_cache if family == "encoder_decoder" else batch.cache
            with pytest.raises(ValueError, match="padded batch"):
                if family == "encoder_decoder":
                    hf(input_ids=ids, decoder_input_ids=target.expand(2, -1), cache=cache)
                else:
                    hf(ids, cache=cache)


def test_greedy_generate_takes_padded_sources_for_the_encoder_decoder(tmp_path: Path) -> None:
    model = _trained(_config("encoder_decoder", "relative", 16))
    hf = _export(model, tmp_path)
    sources = [_text_ids(24, offset=700)[0], _text_ids(24, offset=900)[0][:15]]
    ids, mask = _right_padded(sources)
    with torch.no_grad():
        batch = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        for i, source in enumerate(sources):
            alone = hf.generate(source[None], max_new_tokens=12, do_sample=False)[0]
            assert batch[i, : len(alone)].tolist() == alone.tolist()


def test_a_decoder_refuses_left_padding(tmp_path: Path) -> None:
    hf = _export(_trained(_config("decoder", "rotary", 0)), tmp_path)
    ids, mask = _right_padded([_text_ids(12)[0], _text_ids(12)[1][:8]])
    with torch.no_grad():
        hf(ids, attention_mask=mask)  # right padding: taken
        with pytest.raises(ValueError, match="right padding"):
            hf(ids.flip(1), attention_mask=mask.flip(1))
