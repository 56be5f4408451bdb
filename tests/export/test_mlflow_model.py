"""Exports as MLflow models (`pretrain.export.mlflow_model`): logged to a real MLflow store
and loaded back with `mlflow.transformers.load_model` or `mlflow.pyfunc.load_model`, they give
the exported model's logits and generations."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.config import ModelConfig
from pretrain.export.hf import save_hf
from pretrain.export.hf_tokenizer import write_hf_tokenizer
from pretrain.export.mlflow_model import save_mlflow_model
from pretrain.generate.sampling import SamplingConfig, sample
from pretrain.model import Decoder, LanguageModel, build_model
from pretrain.pretrained import INFO_FILE, save_pretrained
from tests.conftest import REPO_ROOT
from tests.helpers.tiny_models import tiny_tokenizer

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")
mlflow = pytest.importorskip("mlflow")

PROMPT = "ROMEO: What say"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    root = tmp_path_factory.mktemp("tokenizer")
    text = (REPO_ROOT / "corpora" / "tinyshakespeare" / "input.txt").read_text()[:50_000]
    return tiny_tokenizer(root, "hf_bpe", 300, text)


def _model(family: str, tokenizer: Tokenizer) -> LanguageModel:
    config = ModelConfig(
        family=family,  # type: ignore[arg-type]
        vocab_size=tokenizer.vocab_size,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        position="relative",
        mem_len=16,
    )
    torch.manual_seed(0)
    return build_model(config).eval()


def _hf_export(model: LanguageModel, tokenizer: Tokenizer, out: Path) -> Path:
    ids = tokenizer.special_ids
    specials = {"pad": ids.pad, "bos": ids.bos, "eos": ids.eos}
    save_hf(model.config, dict(model.state_dict()), out, special_ids=specials)
    write_hf_tokenizer(out, tokenizer, model_max_length=model.config.max_seq_len)
    (out / INFO_FILE).write_text('{"format": "hf", "name": "tiny"}\n')
    return out


def _logged(export: Path, family: str, tmp_path: Path) -> str:
    """Save the MLflow model, log it in a run of a sqlite store under tmp_path; its URI."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    save_mlflow_model(export, tmp_path / "mlflow_model", family=family)
    experiment = mlflow.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_artifacts(str(tmp_path / "mlflow_model"), "model")
    return f"runs:/{run.info.run_id}/model"


def _ids(tokenizer: Tokenizer) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(PROMPT)])


@pytest.mark.slow  # ~35 s on a loaded 2-core machine (the flavor's pipeline loads twice)
def test_hf_decoder_loads_with_the_transformers_flavor(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = _model("decoder", tokenizer)
    uri = _logged(_hf_export(model, tokenizer, tmp_path / "hf"), "decoder", tmp_path)
    loaded = mlflow.transformers.load_model(uri, return_type="components")
    assert type(loaded["model"]).__name__ == "MnemosForCausalLM"  # the modelling code went along
    assert loaded["tokenizer"](PROMPT)["input_ids"] == tokenizer.encode(PROMPT)
    ids = _ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded["model"](ids).logits, model(ids)[0], atol=1e-5, rtol=0)
    assert isinstance(model, Decoder)
    ours = sample(model, ids, SamplingConfig(max_new_tokens=8, temperature=0.0))
    theirs = loaded["model"].generate(ids, max_new_tokens=8, do_sample=False)
    assert theirs[0, ids.shape[1] :].tolist() == ours[0].tolist()
    # The pyfunc face of the same model: a text-generation pipeline.
    predicted = mlflow.pyfunc.load_model(uri).predict([PROMPT])
    assert predicted[0].startswith(PROMPT)


def test_hf_encoder_loads_with_the_transformers_flavor(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = _model("encoder", tokenizer)
    uri = _logged(_hf_export(model, tokenizer, tmp_path / "hf"), "encoder", tmp_path)
    loaded = mlflow.transformers.load_model(uri, return_type="components")
    assert type(loaded["model"]).__name__ == "MnemosForMaskedLM"
    ids = _ids(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded["model"](ids).logits, model(ids)[0], atol=1e-5, rtol=0)


def test_hf_encoder_decoder_loads_as_pyfunc(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = _model("encoder_decoder", tokenizer)
    export = _hf_export(model, tokenizer, tmp_path / "hf")
    uri = _logged(export, "encoder_decoder", tmp_path)
    predicted = mlflow.pyfunc.load_model(uri).predict([PROMPT], params={"max_new_tokens": 6})
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(export, trust_remote_code=True)
    expected = hf.generate(_ids(tokenizer), max_new_tokens=6, do_sample=False)[0]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    assert predicted == [hf_tokenizer.decode(expected.tolist(), skip_special_tokens=True)]


def test_native_export_loads_as_pyfunc(tokenizer: Tokenizer, tmp_path: Path) -> None:
    model = _model("decoder", tokenizer)
    export = save_pretrained(
        model, tmp_path / "native", tokenizer_dir=str(tokenizer.path), info={"name": "tiny"}
    )
    uri = _logged(export, "decoder", tmp_path)
    loaded = mlflow.pyfunc.load_model(uri)
    assert isinstance(model, Decoder)
    ours = sample(model, _ids(tokenizer), SamplingConfig(max_new_tokens=10, temperature=0.0))
    expected = tokenizer.decode(ours[0].tolist())
    assert loaded.predict([PROMPT], params={"max_new_tokens": 10}) == [expected]
    pretrained = loaded.unwrap_python_model().pretrained
    ids = _ids(tokenizer)
    with torch.no_grad():
        assert torch.equal(pretrained.model(ids)[0], model(ids)[0])


def test_native_encoder_decoder_predicts_what_its_hf_export_generates(
    tokenizer: Tokenizer, tmp_path: Path
) -> None:
    """The native pyfunc writes an encoder-decoder's greedy output; transformers' generate() on
    the HF export of the same weights is the independent reference."""
    model = _model("encoder_decoder", tokenizer)
    native = save_pretrained(
        model, tmp_path / "native", tokenizer_dir=str(tokenizer.path), info={"name": "tiny"}
    )
    predicted = mlflow.pyfunc.load_model(_logged(native, "encoder_decoder", tmp_path)).predict(
        [PROMPT], params={"max_new_tokens": 6}
    )
    export = _hf_export(model, tokenizer, tmp_path / "hf")
    hf = transformers.AutoModelForSeq2SeqLM.from_pretrained(export, trust_remote_code=True)
    expected = hf.generate(_ids(tokenizer), max_new_tokens=6, do_sample=False)[0]
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(export, trust_remote_code=True)
    assert predicted == [hf_tokenizer.decode(expected.tolist(), skip_special_tokens=True)]
