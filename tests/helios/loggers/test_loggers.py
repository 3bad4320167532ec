"""Experiment loggers, read back with each backend's own reader across a kill and a resume."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch

from helios.loggers import CSVLogger, ExperimentLogger, MLflowLogger, WandbLogger

JOB = pathlib.Path(__file__).with_name("log_job.py")
SRC = pathlib.Path(__file__).resolve().parents[3] / "src"

K, END_FIRST, END = 5, 9, 13  # checkpoint after step 5; killed after step 8; resumed to 12


# -- readers: each backend's own ----------------------------------------------------------------


def read_csv(path: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    history: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = int(row.pop("step"))
        for key, value in row.items():
            if value != "":
                history.setdefault(key, []).append((step, float(value)))
    return history


def read_mlflow(uri: str, run_id: str) -> dict[str, list[tuple[int, float]]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    keys = client.get_run(run_id).data.metrics.keys()
    return {
        key: [(m.step, m.value) for m in client.get_metric_history(run_id, key)] for key in keys
    }


def _wandb_records(path: pathlib.Path) -> list[bytes]:
    """The records of a ``.wandb`` transaction log (a LevelDB-style log with a W&B header)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    return records


def read_wandb(save_dir: pathlib.Path, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """The history of an offline run as ``wandb sync`` uploads it, segment after segment.

    A segment written with ``resume_from=<id>?_step=<n>`` (a rewind) records the branch
    point in its run record and starts at step ``n + 1``; the history after step ``n`` is
    dropped before its rows.
    """
    from wandb.proto import wandb_internal_pb2

    def order(path: pathlib.Path) -> tuple[str, int]:
        stamp = path.name.split("-")[2]
        suffix = path.name.rsplit(f"-{run_id}", 1)[1]
        return stamp, int(suffix[1:]) if suffix else 0

    folders = sorted((save_dir / "wandb").glob(f"offline-run-*-{run_id}*"), key=order)
    assert folders, list((save_dir / "wandb").iterdir())
    rows: list[dict[str, Any]] = []
    for folder in folders:
        for raw in _wandb_records(folder / f"run-{run_id}.wandb"):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            if kind == "run" and record.run.HasField("branch_point"):
                point = record.run.branch_point
                assert point.run == run_id and point.metric == "_step"
                rows = [row for row in rows if row["_step"] <= point.value]
            elif kind == "history":
                row = {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
                assert row["_step"] == record.history.step.num, row
                rows.append(row)
    history: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if not key.startswith("_"):
                history.setdefault(key, []).append((row["_step"], float(value)))
    return history


def read_wandb_config(save_dir: pathlib.Path, run_id: str) -> dict[str, Any]:
    """The config of an offline run: its config records (and the run record's), in order."""
    from wandb.proto import wandb_internal_pb2

    config: dict[str, Any] = {}
    for path in (save_dir / "wandb").glob(f"offline-run-*-{run_id}*/run-{run_id}.wandb"):
        for raw in _wandb_records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            kind = record.WhichOneof("record_type")
            items = (
                record.run.config.update
                if kind == "run"
                else record.config.update
                if kind == "config"
                else []
            )
            for item in items:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    config[key] = json.loads(item.value_json)
    return config


def expected_history(k: int, end: int) -> dict[str, list[tuple[int, float]]]:
    """What log_job.py logs: the first process up to step k, the resumed one after it."""
    history: dict[str, list[tuple[int, float]]] = {"loss": [], "acc": []}
    for step in range(end):
        offset = 0.0 if step <= k else 1000.0
        history["loss"].append((step, offset + step))
        if step >= 3 and step % 3 == 0:
            history["acc"].append((step, offset + step / 100))
    return history


def run_job(backend: str, workdir: pathlib.Path, phase: str, end: int, *rewind_to: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC), WANDB_MODE="offline", WANDB_SILENT="true")
    env.pop("WANDB_API_KEY", None)
    extra = [str(step) for step in rewind_to]
    result = subprocess.run(
        [sys.executable, str(JOB), backend, str(workdir), phase, str(K), str(end), *extra],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
        cwd=workdir,
    )
    if phase == "first" and backend == "wandb":
        assert result.returncode == 1 and "simulated crash" in result.stderr, result.stderr
    else:
        expected = -signal.SIGKILL if phase == "first" else 0
        assert result.returncode == expected, result.stderr


def read_back(backend: str, workdir: pathlib.Path) -> dict[str, list[tuple[int, float]]]:
    state = json.loads((workdir / "state.json").read_text())
    if backend == "csv":
        return read_csv(pathlib.Path(state["path"]))
    if backend == "mlflow":
        return read_mlflow(state["tracking_uri"], state["run_id"])
    return read_wandb(workdir, state["run_id"])


# -- kill and resume, read back -----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csv", "mlflow", "wandb"])
def test_kill_and_resume_leaves_every_step_once(backend: str, tmp_path: pathlib.Path) -> None:
    run_job(backend, tmp_path, "first", END_FIRST)
    before = read_back(backend, tmp_path)
    # The killed process wrote points after the checkpoint (they must be dropped on resume).
    assert max(step for step, _ in before["loss"]) == END_FIRST - 1

    run_job(backend, tmp_path, "resume", END)
    history = read_back(backend, tmp_path)
    expected = expected_history(K, END)
    for key in ("loss", "acc"):
        steps = [step for step, _ in history[key]]
        assert len(steps) == len(set(steps)), f"{key}: duplicated steps {steps}"
        assert sorted(history[key]) == expected[key], key


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["csv", "mlflow", "wandb"])
def test_resume_from_an_earlier_step_than_the_saved_one_rewinds(
    backend: str, tmp_path: pathlib.Path
) -> None:
    # The documented rewind: resume_from(step) earlier than the state's last step drops the
    # points after step, not only those after the saved last step.
    rewind = K - 3
    run_job(backend, tmp_path, "first", END_FIRST)
    assert json.loads((tmp_path / "state.json").read_text())["last_step"] == K
    run_job(backend, tmp_path, "resume", END, rewind)
    history = read_back(backend, tmp_path)
    expected = expected_history(rewind, END)
    for key in ("loss", "acc"):
        steps = [step for step, _ in history[key]]
        assert len(steps) == len(set(steps)), f"{key}: duplicated steps {steps}"
        assert sorted(history[key]) == expected[key], key


# -- CSV ----------------------------------------------------------------------------------------


def test_csv_new_metric_adds_a_column_and_keeps_rows(tmp_path: pathlib.Path) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"loss": torch.tensor(0.5)}, step=1)
    logger.log_metrics({"val/acc": 0.75, "loss": 0.25}, step=2)
    logger.close()
    with open(tmp_path / "run.csv", newline="") as file:
        rows = list(csv.reader(file))
    assert rows == [
        ["step", "loss", "val/acc"],
        ["0", "1.0", ""],
        ["1", "0.5", ""],
        ["2", "0.25", "0.75"],
    ]


def test_csv_new_run_never_appends_to_another_runs_file(tmp_path: pathlib.Path) -> None:
    first = CSVLogger(tmp_path / "run.csv")
    first.log_metrics({"loss": 1.0}, step=0)
    first.close()
    second = CSVLogger(tmp_path / "run.csv")
    second.log_metrics({"loss": 2.0}, step=0)
    second.close()
    assert second.path == tmp_path / "run_1.csv"
    assert read_csv(tmp_path / "run.csv") == {"loss": [(0, 1.0)]}
    assert read_csv(tmp_path / "run_1.csv") == {"loss": [(0, 2.0)]}


def test_csv_resume_drops_a_line_cut_short_by_a_crash(tmp_path: pathlib.Path) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    for step in range(3):
        logger.log_metrics({"loss": float(step)}, step=step)
    state = logger.state_dict()
    logger.close()
    with open(tmp_path / "run.csv", "a") as file:
        file.write("1")  # the start of a row for step 1x, cut short

    resumed = CSVLogger(tmp_path / "elsewhere.csv")
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.resume_from(2)
    resumed.log_metrics({"loss": 3.0}, step=3)
    resumed.close()
    assert resumed.path == tmp_path / "run.csv"
    assert not (tmp_path / "elsewhere.csv").exists()
    assert read_csv(tmp_path / "run.csv") == {"loss": [(s, float(s)) for s in range(4)]}


def test_csv_params_are_merged_into_a_json_file(tmp_path: pathlib.Path) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    logger.log_params({"lr": 0.1, "batch": 32})
    logger.log_params({"lr": 0.01})
    logger.close()
    assert json.loads((tmp_path / "run.params.json").read_text()) == {"lr": 0.01, "batch": 32}


def test_state_without_logging_then_resume_starts_the_run(tmp_path: pathlib.Path) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    state = logger.state_dict()
    assert state == {
        "version": 1,
        "backend": "csv",
        "run_id": None,
        "last_step": None,
        "path": str(tmp_path / "run.csv"),
    }
    resumed = CSVLogger(tmp_path / "run.csv")
    resumed.load_state_dict(state)
    resumed.resume_from(0)
    resumed.log_metrics({"loss": 1.0}, step=1)
    resumed.close()
    assert read_csv(tmp_path / "run.csv") == {"loss": [(1, 1.0)]}


def test_resume_before_anything_was_logged_drops_everything(tmp_path: pathlib.Path) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    logger.log_params({"lr": 0.1})  # opens the run: the state has its id
    state = logger.state_dict()
    logger.log_metrics({"loss": 9.0}, step=0)
    resumed = CSVLogger(tmp_path / "run.csv")
    resumed.load_state_dict(state)
    assert state["run_id"] == "run" and state["last_step"] is None
    resumed.log_metrics({"loss": 1.0}, step=0)
    resumed.close()
    assert read_csv(tmp_path / "run.csv") == {"loss": [(0, 1.0)]}


@pytest.mark.slow
def test_a_logger_that_cannot_write_warns_once_and_goes_on(tmp_path: pathlib.Path) -> None:
    # Files of the child process cannot grow past 600 bytes (like a full disk).
    code = textwrap.dedent(
        f"""
        import json, resource, signal
        from helios.loggers import CSVLogger
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (600, 600))
        logger = CSVLogger({str(tmp_path / "run.csv")!r})
        for step in range(100):
            logger.log_metrics({{"loss": step / 3, f"m{{step % 7}}": 1.0}}, step=step)
        state = logger.state_dict()
        logger.close()
        print(json.dumps(state))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["last_step"] == 99
    warning = "helios warning: the csv logger (CSVLogger) failed to write"
    assert result.stderr.count(warning) == 1, result.stderr
    assert "File too large" in result.stderr
    assert (tmp_path / "run.csv").stat().st_size <= 600


def test_csv_logger_refuses_a_special_file() -> None:
    with pytest.raises(ValueError, match=r"writes a regular file .* /dev/null is not one"):
        CSVLogger("/dev/null").log_metrics({"loss": 1.0}, step=0)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("metrics", "step", "error", "match"),
    [
        ({"loss": 1.0}, -1, ValueError, "step must be a non-negative integer, got -1"),
        ({"loss": 1.0}, 1.5, TypeError, r"step must be a non-negative integer, got float"),
        ({"loss": "high"}, 0, TypeError, r"metric 'loss' must be a real number.*'high'"),
        ({"loss": torch.ones(2)}, 0, ValueError, r"metric 'loss' must be a scalar.*\(2,\)"),
        ([("loss", 1.0)], 0, TypeError, "metrics must be a mapping"),
        ({"step": 1.0}, 0, ValueError, "'step' is the step column"),
    ],
)
def test_bad_metrics_are_refused(
    tmp_path: pathlib.Path, metrics: Any, step: Any, error: type[Exception], match: str
) -> None:
    logger = CSVLogger(tmp_path / "run.csv")
    with pytest.raises(error, match=match):
        logger.log_metrics(metrics, step=step)


def test_state_of_another_backend_is_refused(tmp_path: pathlib.Path) -> None:
    state = CSVLogger(tmp_path / "run.csv").state_dict()
    logger = MLflowLogger(save_dir=tmp_path)
    with pytest.raises(ValueError, match="state of a 'csv' logger into a 'mlflow' logger"):
        logger.load_state_dict(state)


def test_resume_after_logging_is_refused(tmp_path: pathlib.Path) -> None:
    logger: ExperimentLogger = CSVLogger(tmp_path / "run.csv")
    logger.log_metrics({"loss": 1.0}, step=0)
    with pytest.raises(RuntimeError, match="before the logger logs anything"):
        logger.resume_from(0)
    with pytest.raises(RuntimeError, match="before the logger logs anything"):
        logger.load_state_dict(logger.state_dict())


def test_mlflow_needs_a_store() -> None:
    with pytest.raises(ValueError, match="needs a tracking_uri or a save_dir"):
        MLflowLogger()


def test_wandb_mode_is_checked() -> None:
    with pytest.raises(ValueError, match=r"mode must be .* got 'ofline'"):
        WandbLogger(mode="ofline")


# -- MLflow -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mlflow_resume_in_process_reopens_the_run(tmp_path: pathlib.Path) -> None:
    from mlflow.tracking import MlflowClient

    logger = MLflowLogger(save_dir=tmp_path, experiment_name="exp", run_name="r", flush_every=2)
    logger.log_params({"lr": 0.1})
    for step in range(4):
        logger.log_metrics({"loss": float(step)}, step=step)
    state = logger.state_dict()
    assert state["tracking_uri"] == "sqlite:///" + str((tmp_path / "mlflow.db").resolve())
    logger.log_metrics({"loss": 99.0, "other": 1.0}, step=4)
    logger.close()

    resumed = MLflowLogger(tracking_uri="sqlite:///unused.db", experiment_name="x")
    resumed.load_state_dict(state)
    resumed.resume_from(3)
    assert resumed.run_id == state["run_id"]
    client = MlflowClient(tracking_uri=state["tracking_uri"])
    run = client.get_run(state["run_id"])
    assert run.info.status == "RUNNING"
    assert run.data.metrics == {"loss": 3.0}  # latest values set back; "other" is gone
    resumed.log_params({"lr": 0.1})  # the same value again is fine
    with pytest.warns(RuntimeWarning, match="parameter 'lr' .* cannot change it"):
        resumed.log_params({"lr": 0.2})
    resumed.log_metrics({"loss": 4.0}, step=4)
    resumed.close()
    assert read_mlflow(state["tracking_uri"], state["run_id"]) == {
        "loss": [(s, float(s)) for s in range(5)]
    }
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.params == {"lr": "0.1"}
    assert run.data.metrics == {"loss": 4.0}
    assert [e.name for e in client.search_experiments()] == ["exp", "Default"] or {
        e.name for e in client.search_experiments()
    } == {"exp", "Default"}


@pytest.mark.slow
def test_mlflow_file_store_resume_drops_points(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    logger = MLflowLogger(tracking_uri=uri, flush_every=1)
    for step in range(3):
        logger.log_metrics({"loss": float(step)}, step=step)
    state = logger.state_dict()
    logger.log_metrics({"loss": 99.0}, step=3)
    logger.close()
    resumed = MLflowLogger(tracking_uri=uri)
    resumed.load_state_dict(state)
    resumed.log_metrics({"loss": 3.0}, step=3)  # resumes from the saved last step, 2
    resumed.close()
    assert read_mlflow(uri, state["run_id"]) == {"loss": [(s, float(s)) for s in range(4)]}


# -- W&B ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_wandb_offline_run_keeps_params_in_config(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(project="p", save_dir=tmp_path, mode="offline", config={"a": 1})
    logger.log_params({"lr": 0.1})
    logger.log_metrics({"loss": 1.0}, step=0)
    logger.log_metrics({"acc": 0.5}, step=0)
    logger.log_metrics({"loss": 0.5}, step=1)
    run_id = logger.run_id
    assert run_id is not None
    logger.close()
    import wandb

    wandb.teardown()  # finish() returns before W&B's service has written the files
    assert read_wandb(tmp_path, run_id) == {"loss": [(0, 1.0), (1, 0.5)], "acc": [(0, 0.5)]}
    assert read_wandb_config(tmp_path, run_id) == {"a": 1, "lr": 0.1}
