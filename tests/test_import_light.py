"""Importing the main helios packages must not pull in heavy optional dependencies."""

import importlib.util
import json
import subprocess
import sys

PACKAGES = ["helios.core", "helios.data", "helios.model", "helios.optim", "helios.trainer"]
HEAVY = [
    "tensorboard",
    "optuna",
    "onnx",
    "onnxruntime",
    "matplotlib",
    "torchvision",
    "sklearn",
    "skimage",
]


def _existing_packages() -> list[str]:
    found = []
    for name in PACKAGES:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except ImportError:
            pass
    return found


def test_import_does_not_load_heavy_dependencies() -> None:
    packages = _existing_packages()
    assert "helios.core" in packages
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
