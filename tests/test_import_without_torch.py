"""`data_pipeline` runs on data-preparation machines that have no torch installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# Make `import torch` fail as it would where torch is not installed, then import every module of
# data_pipeline (and run its CLI's --help) in that interpreter.
SCRIPT = """
import importlib, pkgutil, sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NoTorch())
import data_pipeline
names = [m.name for m in pkgutil.walk_packages(data_pipeline.__path__, "data_pipeline.")]
for name in names:
    importlib.import_module(name)
assert "torch" not in sys.modules
print("imported", len(names) + 1, "modules")
"""


def test_data_pipeline_imports_without_torch() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stdout


def test_the_blocker_really_blocks_torch() -> None:
    # Guards the test above: if the blocker were broken, importing torch would succeed here.
    script = SCRIPT.split("import data_pipeline")[0] + "import torch\n"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "blocked by the test" in result.stderr
