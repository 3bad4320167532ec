import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "pyblaze_classifier.py"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_tutorial_example_runs_and_saves_the_plots(tmp_path: pathlib.Path, precision) -> None:
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--output",
            str(tmp_path / "out"),
            "--epochs",
            "2",
            "--num-workers",
            "0",
            "--precision",
            precision,
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=True,
    )
    assert re.search(r"Epoch 2/2:\n  \[Elapsed \d:\d\d:\d\d\] train_loss: ", result.stdout)
    assert re.search(r"Our model achieves an accuracy of \d+\.\d\d%\.", result.stdout)
    for name in ("loss.png", "validation.png"):
        assert (tmp_path / "out" / name).read_bytes().startswith(b"\x89PNG")
