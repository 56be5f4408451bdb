"""`pretrain export`: the native format (load_pretrained, no DeepSpeed), the Hugging Face
format in transformers, and MLflow registration (models MLflow loads)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from data_pipeline.tokenizer import Tokenizer
from pretrain.checkpoint.reading import consolidated_state_dict, model_from_state, open_checkpoint
from pretrain.cli import main
from pretrain.config import ModelConfig
from pretrain.export.hf import save_hf
from pretrain.generate.sampling import SamplingConfig, sample
from pretrain.model import Decoder, build_model
from pretrain.pretrained import load_pretrained
from tests.conftest import REPO_ROOT
from tests.helpers.trained_runs import TrainedRun

transformers = pytest.importorskip("transformers", reason="transformers is a dev dependency")


def _tokens(vocab: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(5, vocab, (2, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
@pytest.mark.distributed
def test_load_pretrained_gives_the_checkpoints_logits(xl_run: TrainedRun, xl_export: Path) -> None:
    checkpoint = open_checkpoint(xl_run.checkpoints)
    reference = model_from_state(
        checkpoint.config, consolidated_state_dict(checkpoint), torch.float32
    )
    pretrained = load_pretrained(xl_export)
    assert pretrained.config == checkpoint.config.model
    assert pretrained.info["step"] == xl_run.step
    assert pretrained.info["training_run_id"] == xl_run.run_id
    assert pretrained.tokenizer is not None
    assert pretrained.tokenizer.decode(pretrained.tokenizer.encode("ROMEO:")) == "ROMEO:"
    model = pretrained.model
    assert isinstance(model, Decoder)
    assert model.lm_head.weight is model.tok_emb.weight  # tied again after loading
    tokens = _tokens(model.config.vocab_size, 32)
    with torch.no_grad():
        mems: list[torch.Tensor] | None = None
        ref_mems: list[torch.Tensor] | None = None
        for segment in tokens.split(16, dim=1):  # with memory carried, as in training
            ours, mems = model(segment, mems)
            ref, ref_mems = reference(segment, ref_mems)
            assert torch.equal(ours, ref)


@pytest.mark.slow
@pytest.mark.distributed
def test_load_pretrained_needs_no_deepspeed(xl_export: Path) -> None:
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("deepspeed", "mlflow"):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)")
sys.meta_path.insert(0, Block())
import torch
from pretrain.pretrained import load_pretrained
pretrained = load_pretrained({str(xl_export)!r})
logits, mems = pretrained.model(torch.zeros(1, 4, dtype=torch.long))
assert "deepspeed" not in sys.modules and "mlflow" not in sys.modules
print("ok", tuple(logits.shape))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "ok (1, 4, 96)" in result.stdout


@pytest.mark.slow
@pytest.mark.distributed
def test_hf_format_of_a_gpt2_like_checkpoint_loads_in_transformers(
    gpt2_run: TrainedRun, tmp_path: Path
) -> None:
    out = tmp_path / "gpt2_hf"
    assert main(["export", str(gpt2_run.checkpoints), str(out), "--format", "hf"]) == 0
    checkpoint = open_checkpoint(gpt2_run.checkpoints)
    ours = model_from_state(checkpoint.config, consolidated_state_dict(checkpoint), torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "GPT2LMHeadModel"
    tokens = _tokens(ours.config.vocab_size, 48)
    with torch.no_grad():
        expected, _ = ours(tokens)
        got = hf(tokens).logits
    # Same math in fp32, different kernels (GPT-2's Conv1D addmm, its own attention).
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bias", [False, True])
def test_llama_layout_gives_the_same_logits_in_transformers(tmp_path: Path, bias: bool) -> None:
    config = ModelConfig(
        family="decoder",
        vocab_size=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        max_seq_len=64,
        position="rotary",
        norm="rmsnorm",
        activation="swiglu",
        bias=bias,
        tie_embeddings=not bias,
    )
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a swapped tensor would show
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    assert save_hf(config, model.state_dict(), tmp_path) == "llama"
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    tokens = _tokens(config.vocab_size, 40)
    with torch.no_grad():
        expected, _ = model(tokens)
        got = hf(tokens).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.distributed
def test_transformer_xl_checkpoint_exports_to_hf_with_its_memory(
    xl_run: TrainedRun, tmp_path: Path
) -> None:
    out = tmp_path / "xl_hf"
    assert main(["export", str(xl_run.checkpoints), str(out), "--format", "hf"]) == 0
    checkpoint = open_checkpoint(xl_run.checkpoints)
    ours = model_from_state(checkpoint.config, consolidated_state_dict(checkpoint), torch.float32)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert type(hf).__name__ == "MnemosForCausalLM"
    tokens = _tokens(ours.config.vocab_size, 48)
    mems: list[torch.Tensor] | None = None
    cache = None
    with torch.no_grad():
        for segment in tokens.split(16, dim=1):  # memory carried, as in training
            expected, mems = ours(segment, mems)
            output = hf(segment, cache=cache)
            cache = output.cache
            torch.testing.assert_close(output.logits, expected, atol=1e-4, rtol=1e-4)
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tokenizer("ROMEO:", add_special_tokens=False)["input_ids"] == (
        Tokenizer.load(str(out / "tokenizer")).encode("ROMEO:")
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_export_registers_the_model_in_mlflow(xl_run: TrainedRun, tmp_path: Path) -> None:
    """Both formats go to the registry as models MLflow loads: the native export as pyfunc,
    the hf export with the transformers flavor; each gives the checkpoint's generation."""
    import mlflow
    from mlflow.tracking import MlflowClient

    native, hf = tmp_path / "native", tmp_path / "hf"
    assert main(["export", str(xl_run.checkpoints), str(native), "--register", "tiny-xl"]) == 0
    command = ["export", str(xl_run.checkpoints), str(hf), "--format", "hf"]
    assert main([*command, "--register", "tiny-xl-hf"]) == 0
    client = MlflowClient(tracking_uri=xl_run.tracking_uri)
    (version,) = client.search_model_versions("name='tiny-xl'")
    assert version.run_id is not None
    run = client.get_run(version.run_id)
    assert run.data.tags["mnemos.training_run_id"] == xl_run.run_id
    names = {a.path for a in client.list_artifacts(version.run_id, "model")}
    assert {"model/MLmodel", "model/mlflow_pyfunc.py", "model/artifacts"} <= names

    pretrained = load_pretrained(native)
    assert isinstance(pretrained.model, Decoder) and pretrained.tokenizer is not None
    prompt = torch.tensor([pretrained.tokenizer.encode("ROMEO:")])
    greedy = SamplingConfig(
        max_new_tokens=12, temperature=0.0, vocab_size=pretrained.tokenizer.vocab_size
    )
    expected = sample(pretrained.model, prompt, greedy)[0].tolist()
    mlflow.set_tracking_uri(xl_run.tracking_uri)
    as_pyfunc = mlflow.pyfunc.load_model("models:/tiny-xl/1")
    predicted = as_pyfunc.predict(["ROMEO:"], params={"max_new_tokens": 12})
    assert predicted == [pretrained.tokenizer.decode(expected)]
    components = mlflow.transformers.load_model("models:/tiny-xl-hf/1", return_type="components")
    generated = components["model"].generate(prompt, max_new_tokens=12, do_sample=False)
    assert generated[0, prompt.shape[1] :].tolist() == expected
    with torch.no_grad():
        ours, _ = pretrained.model(prompt)
        torch.testing.assert_close(components["model"](prompt).logits, ours, atol=1e-4, rtol=0)
