"""A logger that writes to an MLflow tracking store (extra ``mlflow``)."""

from __future__ import annotations

import os
import pathlib
import time
import warnings
from typing import TYPE_CHECKING, Any

from .base import ExperimentLogger

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

DEFAULT_DB_NAME = "mlflow.db"
"""File name of the SQLite tracking store created in ``save_dir`` by default."""


def _import_mlflow() -> Any:
    try:
        import mlflow
    except ImportError as exc:
        raise ImportError(
            'MLflowLogger needs MLflow: pip install "helios-blaze[mlflow]" '
            "(mlflow-skinny, sqlalchemy and alembic)"
        ) from exc
    return mlflow


def sqlite_uri(path: str | os.PathLike[str]) -> str:
    """Return the tracking URI of an SQLite store in a file.

    Args:
        path: the database file (made absolute).

    Returns:
        ``sqlite:///<absolute path>`` (four slashes before a POSIX path).
    """
    return "sqlite:///" + pathlib.Path(path).resolve().as_posix()


class MLflowLogger(ExperimentLogger):
    """Logs metrics and parameters to one MLflow run.

    By default the tracking store is an SQLite file ``<save_dir>/mlflow.db`` (MLflow's file
    store is deprecated and refuses to start without ``MLFLOW_ALLOW_FILE_STORE``); any
    tracking URI can be given instead. Metrics are buffered and written in batches: when
    ``flush_every`` points are buffered, on :py:meth:`flush`, :py:meth:`state_dict` and
    :py:meth:`close`.

    On resume, the run saved in the state is reopened (its status set back to ``RUNNING``) in
    the tracking store saved in the state, and the points logged after the resume step are
    deleted from SQL stores (SQLite, PostgreSQL, MySQL: through MLflow's own database models,
    since the MLflow client has no call that deletes metric points) and from file stores,
    with each metric's latest value set back to its last remaining point. ``get_metric_history``
    then shows every step once. Other stores (an MLflow server over HTTP, Databricks) cannot
    delete points: a warning says so, and the points logged again after the resume carry the
    same steps as the dropped ones, so such a store shows two values for those steps (the
    later timestamp is the resumed run's).

    Args:
        tracking_uri: the tracking URI (``"sqlite:///..."``, ``"http://..."``, ...);
            ``None`` uses an SQLite file in ``save_dir``.
        save_dir: the folder of the default SQLite store (created if needed); required when
            ``tracking_uri`` is ``None``.
        experiment_name: the experiment (created if it does not exist).
        run_name: the name of a new run (``None``: MLflow picks one).
        tags: tags set on a new run.
        flush_every: write to the store once this many points are buffered.

    Raises:
        ValueError: if neither ``tracking_uri`` nor ``save_dir`` is given, or
            ``flush_every`` is not positive.
    """

    backend = "mlflow"

    def __init__(
        self,
        tracking_uri: str | None = None,
        save_dir: str | os.PathLike[str] | None = None,
        experiment_name: str = "helios",
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        flush_every: int = 100,
    ) -> None:
        super().__init__()
        if tracking_uri is None and save_dir is None:
            raise ValueError(
                "MLflowLogger needs a tracking_uri or a save_dir for its default SQLite "
                "store, got neither"
            )
        if not isinstance(flush_every, int) or flush_every < 1:
            raise ValueError(f"flush_every must be a positive integer, got {flush_every!r}")
        self._save_dir = pathlib.Path(save_dir) if save_dir is not None else None
        self._tracking_uri = tracking_uri
        self._experiment_name = experiment_name
        self._experiment_id: str | None = None
        self._run_name = run_name
        self._tags = dict(tags or {})
        self._flush_every = flush_every
        self._buffer: list[Any] = []
        self._client: MlflowClient | None = None

    @property
    def tracking_uri(self) -> str:
        """The tracking URI in use (the resumed run's after a resume)."""
        if self._tracking_uri is None:
            assert self._save_dir is not None
            return sqlite_uri(self._save_dir / DEFAULT_DB_NAME)
        return self._tracking_uri

    @property
    def client(self) -> MlflowClient:
        """The MLflow client of the run's tracking store (opens the run if needed)."""
        self._ensure_open()
        assert self._client is not None
        return self._client

    def destination_folder(self) -> pathlib.Path | None:
        """The folder of a local tracking store (SQLite file, file store), else ``None``."""
        saved = self.saved_state
        uri = self.tracking_uri
        if saved is not None and saved.get("run_id") is not None:
            uri = str(saved.get("tracking_uri", uri))
        if uri.startswith("sqlite:///"):
            return pathlib.Path(uri[len("sqlite:///") :]).parent
        if uri.startswith("file://"):
            return pathlib.Path(uri[len("file://") :])
        if "://" not in uri:
            return pathlib.Path(uri)
        return None

    # -- hooks -------------------------------------------------------------------------------

    def _open(self, resume_step: int | None) -> None:
        _import_mlflow()
        from mlflow.tracking import MlflowClient

        saved = self.saved_state
        if resume_step is not None and saved is not None:
            self._tracking_uri = saved["tracking_uri"]
            self._experiment_id = saved["experiment_id"]
        elif self._tracking_uri is None:
            assert self._save_dir is not None
            self._save_dir.mkdir(parents=True, exist_ok=True)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if resume_step is not None and self._run_id is not None:
            self._client.update_run(self._run_id, status="RUNNING")
            self._truncate(self._run_id, resume_step)
            return
        experiment = self._client.get_experiment_by_name(self._experiment_name)
        if experiment is None:
            self._experiment_id = self._client.create_experiment(self._experiment_name)
        else:
            self._experiment_id = experiment.experiment_id
        run = self._client.create_run(
            self._experiment_id, run_name=self._run_name, tags=self._tags or None
        )
        self._run_id = run.info.run_id

    def _write_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        timestamp = int(time.time() * 1000)
        self._buffer.extend(Metric(k, v, timestamp, step) for k, v in metrics.items())
        if len(self._buffer) >= self._flush_every:
            self._flush()

    def _write_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        assert self._client is not None and self._run_id is not None
        existing = self._client.get_run(self._run_id).data.params
        new: list[Param] = []
        for key, value in params.items():
            text = str(value)
            if key in existing:
                if existing[key] != text:
                    warnings.warn(
                        f"MLflow parameter {key!r} of run {self._run_id} is already "
                        f"{existing[key]!r}; MLflow cannot change it to {text!r}",
                        RuntimeWarning,
                        stacklevel=3,
                    )
                continue
            new.append(Param(key, text))
        if new:
            self._client.log_batch(self._run_id, params=new)

    def _flush(self) -> None:
        if self._buffer and self._client is not None and self._run_id is not None:
            # log_batch accepts at most 1000 metrics per call.
            for start in range(0, len(self._buffer), 1000):
                self._client.log_batch(self._run_id, metrics=self._buffer[start : start + 1000])
            self._buffer.clear()

    def _close(self) -> None:
        if self._client is not None and self._run_id is not None:
            self._client.set_terminated(self._run_id, status="FINISHED")

    def _extra_state(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_id": self._experiment_id,
        }

    # -- truncation --------------------------------------------------------------------------

    def _truncate(self, run_id: str, step: int) -> None:
        assert self._client is not None
        store = self._client._tracking_client.store
        from mlflow.store.tracking.file_store import FileStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        if isinstance(store, SqlAlchemyStore):
            _truncate_sql(store, run_id, step)
        elif isinstance(store, FileStore):
            _truncate_files(store, run_id, step)
        else:
            warnings.warn(
                f"the MLflow store at {self.tracking_uri} ({type(store).__name__}) cannot delete "
                f"the points of run {run_id} logged after step {step}; the resumed run logs "
                "those steps again, so they show two values",
                RuntimeWarning,
                stacklevel=4,
            )


def _truncate_sql(store: Any, run_id: str, step: int) -> None:
    """Delete the points after ``step`` and set each metric's latest value back."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric

    with store.ManagedSessionMaker(read_only=False) as session:
        session.query(SqlMetric).filter(SqlMetric.run_uuid == run_id, SqlMetric.step > step).delete(
            synchronize_session=False
        )
        latest = session.query(SqlLatestMetric).filter(SqlLatestMetric.run_uuid == run_id).all()
        for record in latest:
            last = (
                session.query(SqlMetric)
                .filter(SqlMetric.run_uuid == run_id, SqlMetric.key == record.key)
                .order_by(SqlMetric.step.desc(), SqlMetric.timestamp.desc(), SqlMetric.value.desc())
                .first()
            )
            if last is None:
                session.delete(record)
            else:
                record.value = last.value
                record.step = last.step
                record.timestamp = last.timestamp
                record.is_nan = last.is_nan


def _truncate_files(store: Any, run_id: str, step: int) -> None:
    """Rewrite each metric file of a file-store run without the points after ``step``."""
    from .csv_logger import write_atomically

    _, run_dir = store._find_run_root(run_id)
    if run_dir is None:
        return
    metrics_dir = pathlib.Path(run_dir) / "metrics"
    if not metrics_dir.is_dir():
        return
    for path in metrics_dir.rglob("*"):
        if not path.is_file():
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        # Each line is "<timestamp> <value> <step>".
        kept = [line for line in lines if len(line.split()) < 3 or int(line.split()[2]) <= step]
        write_atomically(path, "".join(line + "\n" for line in kept))


__all__ = ["DEFAULT_DB_NAME", "MLflowLogger", "sqlite_uri"]
