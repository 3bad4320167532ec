"""The example scripts, run as a user runs them: in a fresh process, from the command line."""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"
DIGITS = EXAMPLES / "digits_classifier.py"


def _run(args: list[str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _final_accuracy(output: str) -> float:
    match = re.search(r"Final validation accuracy: ([0-9.]+)%", output)
    assert match is not None, output
    return float(match.group(1))


def _tensorboard_tags(run_dir: pathlib.Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = events.Tags()
    return set(tags["scalars"]) | set(tags["tensors"])


def test_digits_main_job_trains_logs_checkpoints_and_resumes(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "run"
    chkpt_dir = root / "chkpt" / "classifier"

    first = _run([str(DIGITS), "--root", str(root), "--epochs", "1"], tmp_path)
    output = first.stdout + first.stderr
    assert first.returncode == 0, output
    assert "Resuming" not in output
    assert _final_accuracy(output) > 50.0  # 10% is chance; one epoch reaches ~75%
    assert [p.name for p in chkpt_dir.iterdir()] == ["classifier_epoch_1_iter_89.pth"]
    (log_file,) = (root / "logs").glob("digits_*.log")
    assert "[Validation 0] accuracy:" in log_file.read_text()
    (run_dir,) = (root / "runs").iterdir()
    assert list(run_dir.glob("events.out.tfevents.*"))
    assert {"train/loss", "val", "hparam/accuracy"} <= _tensorboard_tags(run_dir)

    # Same budget: finds the finished run, says so, trains nothing more.
    second = _run([str(DIGITS), "--root", str(root), "--epochs", "1"], tmp_path)
    output = second.stdout + second.stderr
    assert second.returncode == 0, output
    assert (
        f"Resuming training from checkpoint {chkpt_dir / 'classifier_epoch_1_iter_89.pth'}"
        in output
    )
    assert _final_accuracy(output) == _final_accuracy(first.stdout)
    assert [p.name for p in chkpt_dir.iterdir()] == ["classifier_epoch_1_iter_89.pth"]

    # A larger budget continues the same run: same log file, same TensorBoard run.
    third = _run([str(DIGITS), "--root", str(root), "--epochs", "2"], tmp_path)
    output = third.stdout + third.stderr
    assert third.returncode == 0, output
    assert "Resuming training from checkpoint" in output
    assert (chkpt_dir / "classifier_epoch_2_iter_178.pth").is_file()
    assert [p.name for p in (root / "logs").iterdir()] == [log_file.name]
    assert "[Validation 1] accuracy:" in log_file.read_text()
    assert list((root / "runs").iterdir()) == [run_dir]
    # The trainer's line numbers the cycle as the model's own line does, and says what each
    # number is: the metrics table (the epoch's last batch loss is named so), then the mean
    # training loss over the epoch's batches.
    line = re.search(r"^Validation 1 \(epoch 2, iteration 178\): .*$", output, re.MULTILINE)
    assert line is not None, output
    assert re.fullmatch(
        r"Validation 1 \(epoch 2, iteration 178\): metrics accuracy [0-9.]+, "
        r"last_batch_loss [-+.e0-9]+ \| train loss [-+.e0-9]+ \(mean of 89 batches\)",
        line.group(0),
    ), line.group(0)


def test_digits_rejects_a_non_positive_epoch_count(tmp_path: pathlib.Path) -> None:
    result = _run([str(DIGITS), "--root", str(tmp_path), "--epochs", "0"], tmp_path)
    assert result.returncode == 2
    assert "--epochs must be >= 1, but received 0" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_digits_without_sklearn_names_the_extra(tmp_path: pathlib.Path) -> None:
    code = (
        "import runpy, sys; sys.modules['sklearn'] = None; "
        f"sys.argv = ['digits_classifier.py', '--root', {str(tmp_path / 'run')!r}]; "
        f"runpy.run_path({str(DIGITS)!r}, run_name='__main__')"
    )
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 1
    assert 'pip install "helios-blaze[examples]"' in result.stderr
    assert not (tmp_path / "run").exists()


def test_cifar10_without_torchvision_says_what_to_install(tmp_path: pathlib.Path) -> None:
    code = (
        "import runpy, sys; sys.modules['torchvision'] = None; "
        f"runpy.run_path({str(EXAMPLES / 'cifar10.py')!r}, run_name='__main__')"
    )
    result = _run(["-c", code], tmp_path)
    assert result.returncode == 1
    assert "pip install torchvision" in result.stderr
    assert list(tmp_path.iterdir()) == []
