"""The self-contained modelling package an ``--format hf`` export carries for architectures
Hugging Face has no class for (Transformer-XL, encoders, encoder-decoders, mixed variants).

One source of truth: the package is *generated* from this repository's own files, not kept as
a second copy of the model. ``pretrain/model``'s modules are copied as they are, each renamed
``mnemos_<module>.py``, with their ``pretrain.*`` imports rewritten to relative imports of the
copies beside them (transformers copies a remote module's relative imports along with it);
our `ModelConfig` dataclass is copied from ``pretrain/config.py`` into ``mnemos_config.py``;
and the wrappers (`pretrain.export.remote`: ``configuration_mnemos.py``,
``modeling_mnemos.py``) are rewritten the same way. The result imports torch and transformers
only, which `write_package` checks.
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

from pretrain import config as config_module
from pretrain.config import ModelConfig

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"
REMOTE_DIR = Path(__file__).resolve().parent / "remote"
# The modules of pretrain/model the families need (build, __init__ and the rest are not).
MODEL_MODULES = ("positions", "attention", "layers", "blocks", "size", "families", "decoding")
WRAPPERS = ("configuration_mnemos", "modeling_mnemos")
# Which Auto class loads each family, and the wrapper class it names.
AUTO_CLASSES = {
    "decoder": ("AutoModelForCausalLM", "MnemosForCausalLM"),
    "encoder": ("AutoModelForMaskedLM", "MnemosForMaskedLM"),
    "encoder_decoder": ("AutoModelForSeq2SeqLM", "MnemosForSeq2SeqLM"),
}
ALLOWED_IMPORTS = {"__future__", "math", "collections", "contextlib", "dataclasses", "typing"}
ALLOWED_IMPORTS |= {"torch", "transformers"}

_RENAMES = {
    "pretrain.config": ".mnemos_config",
    "pretrain.export.remote.configuration_mnemos": ".configuration_mnemos",
    **{f"pretrain.model.{name}": f".mnemos_{name}" for name in MODEL_MODULES},
}


class PackageError(RuntimeError):
    """The generated package would import something outside torch and transformers."""


def _rewrite(source: str, name: str) -> str:
    def replace(match: re.Match[str]) -> str:
        module = match[1]
        if module not in _RENAMES:
            raise PackageError(f"{name}: imports {module}, which the export does not carry")
        return f"from {_RENAMES[module]} import"

    return re.sub(r"^from (pretrain(?:\.\w+)*) import", replace, source, flags=re.MULTILINE)


def _config_source() -> str:
    """``mnemos_config.py``: the type aliases ModelConfig's fields use and the class itself."""
    source = Path(inspect.getfile(config_module)).read_text()
    aliases = [
        line
        for line in source.splitlines()
        if re.match(r"^(Family|Position|Norm|Activation) = Literal\[", line)
    ]
    return "\n".join(
        [
            '"""mnemos\' ModelConfig, copied from pretrain/config.py by the export."""',
            "",
            "from __future__ import annotations",
            "",
            "from dataclasses import dataclass",
            "from typing import Literal",
            "",
            *aliases,
            "",
            "",
            inspect.getsource(ModelConfig),
        ]
    )


def _check_imports(name: str, source: str) -> None:
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots = {node.module.split(".")[0]}
        else:
            continue
        if not roots <= ALLOWED_IMPORTS:
            raise PackageError(f"{name} imports {sorted(roots - ALLOWED_IMPORTS)}")


def package_files() -> dict[str, str]:
    """File name -> source of the modelling package."""
    files = {"mnemos_config.py": _config_source()}
    for module in MODEL_MODULES:
        files[f"mnemos_{module}.py"] = _rewrite((MODEL_DIR / f"{module}.py").read_text(), module)
    for wrapper in WRAPPERS:
        files[f"{wrapper}.py"] = _rewrite((REMOTE_DIR / f"{wrapper}.py").read_text(), wrapper)
    for name, source in files.items():
        _check_imports(name, source)
    return files


def write_package(out: Path) -> list[str]:
    """Write the package's files under ``out``; returns their names."""
    files = package_files()
    for name, source in files.items():
        (out / name).write_text(source)
    return sorted(files)


def auto_map(family: str) -> dict[str, str]:
    auto_class, wrapper = AUTO_CLASSES[family]
    return {
        "AutoConfig": "configuration_mnemos.MnemosConfig",
        auto_class: f"modeling_mnemos.{wrapper}",
    }
