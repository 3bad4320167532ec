"""``helios verify-resume``: prove that a run resumes exactly, on the user's own config.

The config is trained twice, each run a ``helios fit`` process of its own in a work folder:

1. uninterrupted, for ``--steps`` units (or the config's ``total_steps``);
2. interrupted: killed with SIGKILL ``--kills`` times and stopped once with SIGTERM (the
   scheduler's preemption signal), at random moments, and started again after each, until
   it finishes.

Both runs write a per-step fingerprint (:py:mod:`helios.cli.fingerprint`). The moments are
random steps of the uninterrupted run (seeded by ``--seed``) plus a random fraction of a
step, so signals land inside steps, validations and saves alike. Each process of the
interrupted run is told its moment (``helios fit --interrupt SIGNAL:STEP:FRACTION``) and its
fingerprint plug-in sends the signal to the process itself (SIGKILL to its process group),
so the signal lands at the planned step however busy the machine is; this process only
waits for each to end (or kills it at the timeout) and reports the last step it
fingerprinted. Then the runs are compared
bit for bit: every step's losses and tensor checksums, and the final checkpoints (weights,
optimizer state, RNG states, sampler positions, plug-ins). On a difference the report names
the step where the runs diverge and the first tensor or loss that differs there, and the
first entry of the final checkpoints that differs. The exit status is 0 only when both runs
are identical.

Both runs get their own ``chkpt_root`` (and log and TensorBoard folders) inside the work
folder, no experiment loggers, and a checkpoint every unit when the config saves none.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .config import ConfigError, ResolvedConfig
from .fingerprint import Interruption, checksum
from .inspection import read_checkpoint

# Checkpoint entries that differ between two identical runs by design.
_NOT_COMPARED = frozenset(
    {
        "version", "log_path", "run_path", "tensorboard_events", "loggers", "config",
        "environment", "checkpoint_retention", "preemption", "verify_resume_fingerprint",
    }
)  # fmt: skip


@dataclasses.dataclass
class Plan:
    """The interruptions of the interrupted run.

    Attributes:
        targets: the steps (batches) after which each signal is sent.
        signals: the signal of each target.
    """

    targets: list[int]
    signals: list[signal.Signals]


def make_plan(total: int, kills: int, rng: random.Random) -> Plan:
    """Pick ``kills`` SIGKILLs and one SIGTERM at distinct random steps before the last.

    Args:
        total: the number of batches of the uninterrupted run.
        kills: the number of SIGKILLs.
        rng: the random source.

    Returns:
        The plan, in step order (fewer signals when the run has fewer steps). A SIGTERM
        after the second-to-last step would land in the last one, which the run then ends
        as usual: where another signal is planned, the SIGTERM takes an earlier place.
    """
    count = min(kills + 1, max(total - 1, 0))
    targets = sorted(rng.sample(range(1, total), count)) if count else []
    signals = [signal.SIGKILL] * kills + [signal.SIGTERM]
    rng.shuffle(signals)
    signals = signals[:count]
    if count > 1 and targets[-1] == total - 1 and signals[-1] == signal.SIGTERM:
        signals[-2], signals[-1] = signals[-1], signals[-2]
    return Plan(targets, signals)


@dataclasses.dataclass
class Attempt:
    """One process of a run: how it ended and the last step it fingerprinted."""

    returncode: int
    last_step: int
    signal: str | None
    seconds: float


class RunFailedError(RuntimeError):
    """A training process failed (not by the signals sent to it)."""


def _json(value: Any) -> str:
    return json.dumps(value)


class Runner:
    """Starts the ``helios fit`` processes of one run and reads how each ended.

    Args:
        command: the command line of one attempt.
        folder: the run's folder (its output log is written there).
        fingerprint: the fingerprint file.
        timeout: seconds an attempt may take.
    """

    def __init__(
        self, command: list[str], folder: pathlib.Path, fingerprint: pathlib.Path, timeout: float
    ) -> None:
        self.command = command
        self.folder = folder
        self.fingerprint = fingerprint
        self.timeout = timeout
        self.attempts: list[Attempt] = []

    def run(self, interruption: Interruption | None = None) -> Attempt:
        """Run an attempt to its end; the process sends itself ``interruption``'s signal.

        The process, not this one, sends the signal (see :py:mod:`helios.cli.fingerprint`):
        polling the fingerprint file from here, a busy machine let the run go on many steps
        past the planned one before the signal went out, or even finish.

        Raises:
            RunFailedError: if the attempt takes longer than the timeout (it is killed).
        """
        offset = self.fingerprint.stat().st_size if self.fingerprint.exists() else 0
        command = self.command if interruption is None else [
            *self.command, f"--interrupt={interruption}"
        ]  # fmt: skip
        start = time.monotonic()
        with (self.folder / "output.log").open("a") as log:
            log.write(f"\n=== attempt {len(self.attempts) + 1}: {' '.join(command)}\n")
            log.flush()
            process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
            try:
                process.wait(timeout=self.timeout)
            except subprocess.TimeoutExpired:
                raise RunFailedError(
                    f"an attempt ran longer than {self.timeout:.0f}s; see "
                    f"{self.folder / 'output.log'}"
                ) from None
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        last_step, sent = self._read_attempt(offset)
        attempt = Attempt(process.returncode, last_step, sent, time.monotonic() - start)
        self.attempts.append(attempt)
        return attempt

    def _read_attempt(self, offset: int) -> tuple[int, str | None]:
        """The last step the attempt fingerprinted, and the signal it noted sending."""
        last_step, sent = 0, None
        if not self.fingerprint.exists():
            return last_step, sent
        with self.fingerprint.open("rb") as file:
            file.seek(offset)
            lines = file.read().splitlines()
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line cut by SIGKILL
            if "step" in entry:
                last_step = int(entry["step"])
            elif entry.get("event") == "signal":
                sent = str(entry["signal"])
        return last_step, sent


def read_fingerprints(path: pathlib.Path) -> dict[int, dict[str, Any]]:
    """The fingerprint of each step of a run; a step run again (after a resume) counts last."""
    steps: dict[int, dict[str, Any]] = {}
    if not path.exists():
        return steps
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by SIGKILL
        if "step" in entry:
            steps[int(entry["step"])] = entry
    return steps


@dataclasses.dataclass
class Divergence:
    """Where two runs first differ."""

    step: int
    epoch: int | None
    iteration: int | None
    loss: str | None
    tensor: str | None
    detail: str


def first_divergence(
    reference: Mapping[int, Mapping[str, Any]], other: Mapping[int, Mapping[str, Any]]
) -> Divergence | None:
    """Compare two runs' fingerprints step by step; return the first difference."""
    for step in sorted({*reference, *other}):
        a, b = reference.get(step), other.get(step)
        if a is None or b is None:
            where = "uninterrupted" if a is None else "interrupted"
            entry = a or b or {}
            return Divergence(
                step, entry.get("epoch"), entry.get("iteration"), None, None,
                f"the {where} run has no step {step}",
            )  # fmt: skip
        loss = next(
            (
                k
                for k in sorted({*a["losses"], *b["losses"]})
                if a["losses"].get(k) != b["losses"].get(k)
            ),
            None,
        )
        tensor = next(
            (
                k
                for k in [*a["tensors"], *b["tensors"]]
                if a["tensors"].get(k) != b["tensors"].get(k)
            ),
            None,
        )
        if loss is None and tensor is None:
            continue
        details = []
        if loss is not None:
            details.append(
                f"loss {loss!r}: {_hex(a['losses'].get(loss))} (uninterrupted) vs "
                f"{_hex(b['losses'].get(loss))} (interrupted)"
            )
        if tensor is not None:
            details.append(f"first tensor that differs: {tensor}")
        return Divergence(
            step, a.get("epoch"), a.get("iteration"), loss, tensor, "; ".join(details)
        )
    return None


def _hex(value: Any) -> str:
    if isinstance(value, str) and value.startswith(("0x", "-0x")):
        return repr(float.fromhex(value))
    return repr(value)


def _bits(tensor: torch.Tensor) -> str:
    return checksum(tensor)


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    """The first entry (dotted path) where two loaded checkpoint states differ, bit for bit."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return path or "<root>"
        return None if _bits(a) == _bits(b) else path or "<root>"
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in [*a, *(k for k in b if k not in a)]:
            if key not in a or key not in b:
                return f"{path}.{key}" if path else str(key)
            found = first_difference(a[key], b[key], f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
        return None
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        if len(a) != len(b):
            return path or "<root>"
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
        return None
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b):
        return first_difference(_fields(a), _fields(b), path)
    same = type(a) is type(b) and (a == b or (a != a and b != b))
    return None if same else path or "<root>"


def _fields(value: Any) -> dict[str, Any]:
    fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    fields.pop("average_iter_time", None)  # a timing, not a state
    return fields


def _newest_checkpoint(root: pathlib.Path) -> pathlib.Path | None:
    from helios.trainer import find_last_checkpoint

    found = [
        last
        for folder in sorted(p for p in root.iterdir() if p.is_dir())
        if (last := find_last_checkpoint(folder)) is not None
    ] if root.is_dir() else []  # fmt: skip
    return found[0] if len(found) == 1 else None


def compare_checkpoints(a: pathlib.Path, b: pathlib.Path, allow: Sequence[type]) -> str | None:
    """The first entry where two final checkpoints differ (``None``: identical)."""
    first = read_checkpoint(a, extra_types=allow).contents
    second = read_checkpoint(b, extra_types=allow).contents
    keys = [k for k in first if k not in _NOT_COMPARED]
    keys += [k for k in second if k not in _NOT_COMPARED and k not in first]
    return first_difference({k: first.get(k) for k in keys}, {k: second.get(k) for k in keys})


def _overrides(config: ResolvedConfig, folder: pathlib.Path, steps: int | None) -> list[str]:
    trainer = config.data["trainer"]
    out = [f"--trainer.chkpt_root={_json(str(folder / 'chkpt'))}", "--loggers=[]"]
    out.append("--trainer.enable_progress_bar=false")
    if trainer.get("log_path") is not None:
        out.append(f"--trainer.log_path={_json(str(folder / 'logs'))}")
    if trainer.get("run_path") is not None:
        out.append(f"--trainer.run_path={_json(str(folder / 'runs'))}")
    if trainer.get("chkpt_frequency") is None:
        out.append("--trainer.chkpt_frequency=1")
    if steps is not None:
        out.append(f"--trainer.total_steps={steps}")
    return out


def verify_resume(
    config_path: pathlib.Path,
    config: ResolvedConfig,
    user_overrides: Sequence[str],
    kills: int = 3,
    steps: int | None = None,
    seed: int = 0,
    workdir: pathlib.Path | None = None,
    timeout: float = 600.0,
    model_types: Sequence[type] = (),
) -> int:
    """Run the comparison and print the report.

    Args:
        config_path: the config file.
        config: the resolved config (checked before anything runs).
        user_overrides: the command line's overrides, passed on to every run.
        kills: the number of SIGKILLs.
        steps: ``total_steps`` of both runs (``None``: the config's).
        seed: the seed of the random moments.
        workdir: the work folder (``None``: a temporary one, removed when the runs are
            identical).
        timeout: seconds each process may take.
        model_types: the types the model's checkpoints hold (for the safe loads).

    Returns:
        0 when the runs are identical, 1 when they differ.

    Raises:
        RunFailedError: if a run fails.
        ConfigError: for bad arguments.
    """
    if kills < 0:
        raise ConfigError("", f"--kills must be >= 0, got {kills}")
    if steps is not None and steps < 1:
        raise ConfigError("", f"--steps must be >= 1, got {steps}")
    total_steps = steps if steps is not None else config.data["trainer"].get("total_steps")
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(
            "trainer.total_steps",
            f"verify-resume needs a finite number of steps, got {total_steps!r}: pass --steps",
        )
    temporary = workdir is None
    work = pathlib.Path(tempfile.mkdtemp(prefix="helios-verify-")) if temporary else workdir
    assert work is not None
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)

    def runner(name: str) -> Runner:
        folder = work / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        fingerprint = folder / "fingerprints.jsonl"
        command = [
            sys.executable, "-m", "helios", "fit", str(config_path), *user_overrides,
            *_overrides(config, folder, steps), f"--fingerprint={fingerprint}",
        ]  # fmt: skip
        return Runner(command, folder, fingerprint, timeout)

    unit = config.data["trainer"].get("train_unit", "epoch")
    print(f"verify-resume: {config_path} for {total_steps} {unit}(s), work folder {work}")
    reference = runner("uninterrupted")
    done = reference.run()
    if done.returncode != 0:
        raise RunFailedError(
            f"the uninterrupted run failed (exit {done.returncode}); see "
            f"{reference.folder / 'output.log'}"
        )
    reference_steps = read_fingerprints(reference.fingerprint)
    total = max(reference_steps, default=0)
    print(f"uninterrupted: {total} steps in {done.seconds:.1f}s")

    plan = make_plan(total, kills, rng)
    interrupted = runner("interrupted")
    for target, sig in zip(plan.targets, plan.signals, strict=True):
        attempt = interrupted.run(Interruption(sig, target, rng.random()))
        # SIGTERM stops the run at the next batch boundary (exit 143), unless it lands in
        # the last step, which then ends the run as usual (exit 0).
        expected = {-signal.SIGKILL} if sig == signal.SIGKILL else {128 + signal.SIGTERM, 0}
        if attempt.signal is None and attempt.returncode == 0:  # it stopped on its own
            print(
                f"interrupted: the run ended at step {attempt.last_step}, before the planned "
                f"{sig.name} (after {target})"
            )
            break
        if attempt.signal is None or attempt.returncode not in expected:
            after = attempt.signal or "no signal"
            raise RunFailedError(
                f"the interrupted run failed (exit {attempt.returncode}) after {after}; see "
                f"{interrupted.folder / 'output.log'}"
            )
        print(
            f"interrupted: {attempt.signal} at step {attempt.last_step} (planned after "
            f"{target}), exit {attempt.returncode}"
        )
    final = interrupted.run()
    if final.returncode != 0:
        raise RunFailedError(
            f"the resumed run failed (exit {final.returncode}); see "
            f"{interrupted.folder / 'output.log'}"
        )
    signalled = sum(attempt.signal is not None for attempt in interrupted.attempts)
    print(f"interrupted: finished after {signalled} interruption(s)")

    divergence = first_divergence(reference_steps, read_fingerprints(interrupted.fingerprint))
    a = _newest_checkpoint(reference.folder / "chkpt")
    b = _newest_checkpoint(interrupted.folder / "chkpt")
    if a is None or b is None:
        raise RunFailedError(f"a run wrote no final checkpoint; see {work}")
    final_difference = compare_checkpoints(a, b, model_types)
    if divergence is None and final_difference is None:
        print(
            f"IDENTICAL: the {total} steps' losses and tensors and the final checkpoints "
            "(weights, optimizer state, RNG states, sampler positions) are bit-identical"
        )
        if temporary:
            shutil.rmtree(work, ignore_errors=True)
        return 0
    print("DIFFERENT: the interrupted run does not continue the uninterrupted one exactly")
    if divergence is not None:
        where = f"step {divergence.step}"
        if divergence.epoch is not None:
            where += f" (epoch {divergence.epoch}, iteration {divergence.iteration})"
        print(f"  the runs diverge at {where}: {divergence.detail}")
    if final_difference is not None:
        print(f"  final checkpoints: first difference in {final_difference}")
    print(f"  the runs are kept in {work}")
    return 1


__all__ = [
    "Attempt",
    "Divergence",
    "Plan",
    "RunFailedError",
    "compare_checkpoints",
    "first_difference",
    "first_divergence",
    "make_plan",
    "read_fingerprints",
    "verify_resume",
]
