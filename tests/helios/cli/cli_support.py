"""Helpers of the tests of the ``helios`` command: run the installed command, MLP configs."""

from __future__ import annotations

import pathlib
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent
EXAMPLES = HERE.parents[2] / "examples"
HELIOS = pathlib.Path(sys.executable).with_name("helios")
MLP_CHECKPOINT = pathlib.Path("chkpt", "mlp", "mlp_epoch_1_iter_10.pth")
"""The checkpoint of the session's MLP run, in the run's folder (the ``mlp_run`` fixture)."""


def run_helios(
    *args: object, cwd: pathlib.Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run the installed ``helios`` console script."""
    assert HELIOS.exists(), f"the helios command is not installed next to {sys.executable}"
    return subprocess.run(
        [str(HELIOS), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def mlp_config(folder: pathlib.Path, model: str = "MLPClassifier", **trainer: object) -> str:
    """A YAML config for the tiny MLP of ``mlp_parts.py``, written into ``folder``."""
    settings = {
        "train_unit": "iteration",
        "total_steps": 30,
        "chkpt_frequency": 10,
        "chkpt_root": "chkpt",
        "enable_deterministic": True,
        "print_banner": False,
        **trainer,
    }
    lines = [f"    {key}: {value}" for key, value in settings.items()]
    text = (
        f"imports: [{HERE / 'mlp_parts.py'}]\n"
        "num_threads: 1\n"
        "model:\n"
        f"  type: {model}\n"
        "  args:\n"
        "    network: {type: TinyMLP, args: {width: 16}}\n"
        "    optimizer: {type: Adam, args: {lr: 0.01}}\n"
        "    loss: {type: CrossEntropyLoss}\n"
        "datamodule: {type: SmallDigits, args: {batch_size: 32}}\n"
        "trainer:\n" + "\n".join(line[2:] for line in lines) + "\n"
    )
    path = folder / "mlp.yaml"
    path.write_text(text)
    return str(path)
