"""An export as an MLflow model: what ``pretrain export --register`` logs and registers, so the
registry holds a model `mlflow.transformers.load_model` or `mlflow.pyfunc.load_model` loads,
not only a folder of files.

* ``--format hf`` decoders and encoders: MLflow's transformers flavor (a ``text-generation`` or
  ``fill-mask`` pipeline; pyfunc too). The model is loaded with its Auto class and handed to the
  flavor as components: the flavor's other route, a local checkpoint path, fails on
  transformers 5 (mlflow 3.17 reads a pipeline class where transformers now keeps its name),
  and a mnemos export's modelling code goes along either way (`save_pretrained` copies a remote
  model's code).
* ``--format hf`` encoder-decoders (transformers 5 dropped the sequence-to-sequence pipelines)
  and native exports: a pyfunc model from code, `pretrain.generate.mlflow_pyfunc`, with the
  export directory as its artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

from pretrain.export.package import AUTO_CLASSES
from pretrain.pretrained import INFO_FILE

PIPELINE_TASKS = {"decoder": "text-generation", "encoder": "fill-mask"}
# The pyfunc model's code: a file MLflow copies into the model, named by path, not imported
# (it generates text, so it lives with generation, a stage above export).
PYFUNC_CODE = Path(__file__).resolve().parents[1] / "generate" / "mlflow_pyfunc.py"


def _requirements() -> list[str]:
    """Pinned to what wrote the model; given, not inferred (inference loads the model again in
    a subprocess)."""
    import mlflow
    import torch
    import transformers

    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
    ]


def _model_card(export_dir: Path) -> object:
    """The export's provenance as the model card (the flavor otherwise asks the Hub for one)."""
    from huggingface_hub import ModelCard

    info = json.loads((export_dir / INFO_FILE).read_text())
    lines = [f"- {key}: {value}" for key, value in sorted(info.items())]
    header = ["---", "library_name: transformers", "tags: [mnemos]", "---", ""]
    title = "# " + str(info.get("name", "mnemos export"))
    return ModelCard("\n".join([*header, title, "", *lines]))


def save_mlflow_model(export_dir: str | Path, path: str | Path, *, family: str) -> str:
    """Write the MLflow model of ``export_dir`` (an export of a ``family`` model) to ``path``,
    which must not exist; returns the flavor it was saved with."""
    # Absolute: the flavor looks a model's license up on the Hub by the name it was loaded
    # from, and a relative path such as exports/xl_hf reads as a repo id (retried for ~30 s
    # offline); an absolute path is no repo id and is skipped at once.
    export_dir, path = Path(export_dir).resolve(), Path(path)
    fmt = json.loads((export_dir / INFO_FILE).read_text())["format"]
    if fmt == "hf" and family in PIPELINE_TASKS:
        import mlflow.transformers
        import transformers

        auto = getattr(transformers, AUTO_CLASSES[family][0])
        model = auto.from_pretrained(export_dir, trust_remote_code=True)
        tokenizer = transformers.AutoTokenizer.from_pretrained(export_dir, trust_remote_code=True)
        mlflow.transformers.save_model(
            {"model": model, "tokenizer": tokenizer},
            str(path),
            task=PIPELINE_TASKS[family],
            torch_dtype=model.dtype,  # as exported (--dtype), not the flavor's default
            model_card=_model_card(export_dir),
            pip_requirements=_requirements(),
        )
        return "transformers"
    import mlflow.pyfunc
    from mlflow.models import infer_signature

    # Written out, not inferred from predict's type hints: they cannot declare the parameter.
    signature = infer_signature(["text"], ["continuation"], params={"max_new_tokens": 32})
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(PYFUNC_CODE),
        artifacts={"export": str(export_dir)},
        signature=signature,
        pip_requirements=_requirements(),
    )
    return "python_function"
