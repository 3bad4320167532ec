"""Importing the main helios packages must not pull in heavy optional dependencies."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

HEAVY = [
    "tensorboard",
    "optuna",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "torchvision",
    "sklearn",
    "skimage",
    "mlflow",
    "wandb",
    "jsonargparse",
    "yaml",
    "datasets",
]


@pytest.mark.parametrize(
    "packages",
    [
        ["helios.core", "helios.data", "helios.model", "helios.optim"],
        ["helios.trainer", "helios.plugins", "helios.losses", "helios.metrics", "helios.nn"],
        ["helios.loggers"],
        ["helios", "helios.cli"],
    ],
)
def test_import_does_not_load_heavy_dependencies(packages: list[str]) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for name in {packages!r}:\n"
        "    importlib.import_module(name)\n"
        f"heavy = {HEAVY!r}\n"
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & set(heavy))\n"
        "print(json.dumps(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == [], f"importing {packages} loaded {loaded}"
