"""A process that logs through one experiment logger, for the kill-and-resume tests.

``python log_job.py BACKEND WORKDIR first K N``: log steps 0..N-1, write the logger's state
to ``WORKDIR/state.json`` right after step K (as a checkpoint would), flush, then kill
itself with SIGKILL; for W&B, fail with an uncaught exception instead: W&B's service writes
an offline run's transaction log in 32 KiB blocks and only flushes it when the run finishes
(which its exit hook does on an exception), so a SIGKILL loses what it had not written.

``python log_job.py BACKEND WORKDIR resume K M [R]``: a new logger loads ``state.json``,
resumes from step K (or rewinds to step R < K, earlier than the state's last step) and logs
the steps after it up to M-1, then closes.

``loss`` is ``step`` in the first process and ``1000 + step`` after the resume; ``acc``
appears from step 3 on, every third step (a metric that the logger first sees late).
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys

from helios.loggers import CSVLogger, ExperimentLogger, MLflowLogger, WandbLogger


def make_logger(backend: str, workdir: pathlib.Path) -> ExperimentLogger:
    if backend == "csv":
        return CSVLogger(workdir / "metrics.csv")
    if backend == "mlflow":
        return MLflowLogger(save_dir=workdir, experiment_name="resume-test", run_name="job")
    if backend == "wandb":
        return WandbLogger(project="resume-test", save_dir=workdir, mode="offline")
    raise ValueError(backend)


def log_step(logger: ExperimentLogger, step: int, offset: float) -> None:
    metrics = {"loss": offset + step}
    if step >= 3 and step % 3 == 0:
        metrics["acc"] = offset + step / 100
    logger.log_metrics(metrics, step=step)


def main() -> None:
    backend, workdir_arg, phase, k_arg, end_arg = sys.argv[1:6]
    workdir = pathlib.Path(workdir_arg)
    k, end = int(k_arg), int(end_arg)
    logger = make_logger(backend, workdir)
    if phase == "first":
        logger.log_params({"lr": 0.1, "phase": "first"})
        for step in range(end):
            log_step(logger, step, 0.0)
            if step == k:
                (workdir / "state.json").write_text(json.dumps(logger.state_dict()))
        logger.flush()
        if backend == "wandb":
            raise RuntimeError("simulated crash after the checkpoint")
        os.kill(os.getpid(), signal.SIGKILL)
    state = json.loads((workdir / "state.json").read_text())
    logger.load_state_dict(state)
    start = int(sys.argv[6]) if len(sys.argv) > 6 else k
    logger.resume_from(start)
    for step in range(start + 1, end):
        log_step(logger, step, 1000.0)
    logger.close()


if __name__ == "__main__":
    main()
