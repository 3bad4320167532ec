"""Hyper-parameter tuning with Optuna: :py:class:`OptunaPlugin` and study/sampler resume.

This module needs the optional Optuna dependency (``pip install "helios-blaze[tune]"``)
and is not imported by :py:mod:`helios.plugins`; import it explicitly.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import inspect
import pathlib
import pickle
import re
import shutil
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

try:
    import optuna
    from optuna.trial import TrialState
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "helios.plugins.optuna requires Optuna, which is not installed. Install it "
        'with: pip install "helios-blaze[tune]"'
    ) from exc

from helios.core import distributed as dist
from helios.core.files import write_atomically

from .plugin import PLUGIN_REGISTRY, Plugin

if TYPE_CHECKING:
    from helios.core.placement import RunTrainer
    from helios.model import Model

_PRUNED_KEY = "ddp_hl:pruned"
_CYCLE_KEY = "ddp_hl:cycle"
_ORIG_NUMBER_KEY = "hl:id"

_SQLITE_PREFIX = "sqlite:///"
_SAMPLER_FILE = re.compile(r"^sampler_trial-(\d+)\.pkl$")


class StudyArgumentsError(TypeError, ValueError):
    """``study_args`` of :py:func:`resume_study` lacks ``"storage"``.

    A :py:class:`TypeError` as Helios 1.2.7 raises, and a :py:class:`ValueError`.
    """


class LoadIfExistsError(KeyError, ValueError):
    """``study_args["load_if_exists"]`` of :py:func:`resume_study` is missing or not True.

    A :py:class:`KeyError` as Helios 1.2.7 raises, and a :py:class:`ValueError`; ``str()``
    gives the message itself.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def _trial_identity(trial: optuna.trial.FrozenTrial | optuna.trial.BaseTrial) -> int:
    """Return the number of the trial a (possibly re-enqueued) trial stands for."""
    number: int = trial.user_attrs.get(_ORIG_NUMBER_KEY, trial.number)
    return number


_SERVER_DIALECTS = ("postgresql",)
_URL_EXAMPLES = "'sqlite:///study.db' or 'postgresql+psycopg://user@host:5432/db'"


@dataclasses.dataclass(frozen=True)
class _StudyStorage:
    """Where a study of :py:func:`resume_study` lives: an SQLite file or a database server.

    Args:
        url: the SQLAlchemy URL.
        path: the SQLite file; None for a database server.
        study_name: the study's name, if given.
    """

    url: str
    path: pathlib.Path | None
    study_name: str | None

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Return the lock that every helios worker of this study holds to change it."""
        if self.path is not None:
            return _file_lock(self.path)
        return _server_lock(self.url, self.study_name)

    def engine_kwargs(self) -> dict[str, Any]:
        """Return the SQLAlchemy engine arguments for Optuna's storage."""
        if self.path is not None:
            # Wait for the other workers' writes rather than fail at once.
            return {"connect_args": {"timeout": 60}}
        # A connection the server dropped (restart, idle timeout) is replaced, not reused.
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 60}}

    def backup(self) -> str | None:
        """Back the study up; return where (a file path or a study name), or None."""
        if self.path is not None:
            backup = _backup_study(self.path)
            return None if backup is None else str(backup)
        return _backup_server_study(self.url, self.study_name)


def _study_storage(study_args: dict[str, Any]) -> _StudyStorage:
    """Check the arguments given to :py:func:`resume_study` and return the storage."""
    if not isinstance(study_args, dict):
        raise TypeError(
            f"expected 'study_args' to be a dict of arguments for "
            f"optuna.create_study, got {type(study_args).__name__}"
        )
    if "storage" not in study_args:
        raise StudyArgumentsError(
            "'study_args' must contain the key 'storage' set to a database URL such as "
            f"{_URL_EXAMPLES}"
        )
    storage = study_args["storage"]
    if not isinstance(storage, str):
        raise TypeError(
            f"expected study_args['storage'] to be a database URL string such as "
            f"{_URL_EXAMPLES}, got {type(storage).__name__}"
        )
    path: pathlib.Path | None = None
    if storage.startswith("sqlite:"):
        path_str = storage.removeprefix(_SQLITE_PREFIX).split("?", 1)[0]
        if not storage.startswith(_SQLITE_PREFIX) or path_str in ("", ":memory:"):
            raise ValueError(
                f"expected study_args['storage'] to be the URL of an SQLite file, "
                f"starting with '{_SQLITE_PREFIX}', got {storage!r}"
            )
        path = pathlib.Path(path_str).resolve()
    elif _dialect(storage) not in _SERVER_DIALECTS:
        raise ValueError(
            f"expected study_args['storage'] to be the URL of an SQLite file or of a "
            f"PostgreSQL database, such as {_URL_EXAMPLES}, got {_hide_password(storage)!r}"
        )
    if study_args.get("load_if_exists") is not True:
        raise LoadIfExistsError(
            "study_args['load_if_exists'] must be True so the existing study is "
            f"loaded, got {study_args.get('load_if_exists')!r}"
        )
    name = study_args.get("study_name")
    return _StudyStorage(storage, path, name if isinstance(name, str) else None)


def _dialect(url: str) -> str | None:
    """Return the database of a SQLAlchemy URL (``"postgresql"``), or None if unreadable."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        return str(sqlalchemy.engine.make_url(url).get_backend_name())
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return None


def _hide_password(url: str) -> str:
    """Return the URL with its password masked, for error messages."""
    import sqlalchemy.engine
    import sqlalchemy.exc

    try:
        return str(sqlalchemy.engine.make_url(url).render_as_string(hide_password=True))
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return url


def _check_failed_states(failed_states: Sequence[TrialState]) -> frozenset[TrialState]:
    states = frozenset(failed_states)
    for state in states:
        if not isinstance(state, TrialState):
            raise TypeError(
                f"expected 'failed_states' to hold optuna TrialState values, got {state!r}"
            )
        if state not in (TrialState.FAIL, TrialState.RUNNING):
            raise ValueError(
                f"'failed_states' may only hold TrialState.FAIL and "
                f"TrialState.RUNNING, got {state}: finished trials are kept and waiting "
                "trials run anyway"
            )
    return states


def _backup_study(storage_path: pathlib.Path) -> pathlib.Path | None:
    """Copy an SQLite study database to ``<stem>_bkp-<n><suffix>`` next to it.

    ``n`` is one more than the highest existing backup number of that database, starting
    at 0. The copy uses SQLite's backup API, so it is consistent even in WAL mode.

    Args:
        storage_path: the database file.

    Returns:
        The path of the backup, or None if the database does not exist.
    """
    if not storage_path.exists():
        return None
    stem = storage_path.stem
    pattern = re.compile(rf"^{re.escape(stem)}_bkp-(\d+){re.escape(storage_path.suffix)}$")
    numbers = [
        int(match.group(1))
        for path in storage_path.parent.iterdir()
        if (match := pattern.match(path.name)) is not None
    ]
    next_number = max(numbers) + 1 if numbers else 0
    backup_path = storage_path.with_name(f"{stem}_bkp-{next_number}{storage_path.suffix}")

    source = sqlite3.connect(storage_path)
    try:
        target = sqlite3.connect(backup_path)
        try:
            source.backup(target)
        finally:
            target.close()
    finally:
        source.close()
    return backup_path


DEFAULT_HEARTBEAT_INTERVAL = 10
"""Seconds between two heartbeats of a running trial, as :py:func:`resume_study` sets up."""

# Trial system attributes carried over to the re-run of a failed trial: the rungs that
# Optuna's successive-halving pruner recorded (besides the intermediate values).
_CARRIED_SYSTEM_ATTR_PREFIXES = ("completed_rung_",)

# How often, and how long at most, opening a study is retried when other processes create
# the same SQLite database at the same moment (Optuna creates its tables without a lock).
_OPEN_ATTEMPTS = 10
_OPEN_BACKOFF_S = 0.05
_OPEN_BACKOFF_MAX_S = 1.0


@contextlib.contextmanager
def _file_lock(storage_path: pathlib.Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<database>.lock`` (waits for other holders).

    Every helios process that opens the study or re-queues its trials takes this lock, so
    two workers never classify and re-queue the same trials at once. The kernel releases
    the lock when its holder dies, so a killed worker never holds it.
    """
    storage_path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = storage_path.with_name(storage_path.name + ".lock")
    with lock_path.open("a+b") as file:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _server_lock_key(study_name: str | None) -> int:
    """Return the 64-bit advisory-lock key of a study (the same in every process)."""
    digest = hashlib.sha256(f"helios.plugins.optuna:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def _server_lock(url: str, study_name: str | None) -> Iterator[None]:
    """Hold PostgreSQL's advisory lock of the study (waits for other holders).

    The lock plays the part of the SQLite file lock for workers on several machines: it
    lives in the database server, on a connection of its own, and the server releases it
    when that connection ends, so a killed worker (or one cut off from the server) never
    holds it for long.
    """
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            key = _server_lock_key(study_name)
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            connection.commit()
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                connection.commit()
    finally:
        engine.dispose()


def _backup_server_study(url: str, study_name: str | None) -> str | None:
    """Copy a study on a database server to ``<name>_bkp-<n>`` in the same database.

    ``n`` is one more than the highest existing backup number of that study, starting at 0.

    Args:
        url: the database URL.
        study_name: the study; without a name there is nothing to back up.

    Returns:
        The name of the backup study, or None if the study does not exist (yet).
    """
    if study_name is None:
        return None
    storage = optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
    try:
        names = {study.study_name for study in storage.get_all_studies()}
        if study_name not in names:
            return None
        pattern = re.compile(rf"^{re.escape(study_name)}_bkp-(\d+)$")
        numbers = [int(match.group(1)) for name in names if (match := pattern.match(name))]
        backup_name = f"{study_name}_bkp-{max(numbers) + 1 if numbers else 0}"
        optuna.copy_study(
            from_study_name=study_name,
            from_storage=storage,
            to_storage=storage,
            to_study_name=backup_name,
        )
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return backup_name


def _retry_on_schema_race(action: Callable[[], Any], what: str) -> Any:
    """Run ``action``, retrying it when another process creates the same database.

    Optuna creates the tables of a new SQLite database without a lock, so processes doing
    it at once fail with "table ... already exists", "database is locked" or a duplicate
    ``alembic_version`` row. Those errors are retried with a growing pause (at most
    ``_OPEN_ATTEMPTS`` tries); any other error is raised at once.
    """
    import sqlalchemy.exc

    retried = (
        sqlalchemy.exc.OperationalError,
        sqlalchemy.exc.IntegrityError,
        optuna.exceptions.StorageInternalError,
    )
    pause = _OPEN_BACKOFF_S
    for attempt in range(1, _OPEN_ATTEMPTS + 1):
        try:
            return action()
        except retried as error:
            if attempt == _OPEN_ATTEMPTS:
                raise RuntimeError(
                    f"could not {what} after {_OPEN_ATTEMPTS} tries, the last one "
                    f"failed with {type(error).__name__}: {error}"
                ) from error
            time.sleep(pause)
            pause = min(2 * pause, _OPEN_BACKOFF_MAX_S)
    raise AssertionError("unreachable")  # pragma: no cover


def _heartbeat_trial_ids(storage: Any) -> set[int] | None:
    """Return the ids of the trials that ever recorded a heartbeat, or None if unknown."""
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return None
    try:
        from optuna.storages._rdb import models

        session = backend.scoped_session()
        try:
            rows = session.query(models.TrialHeartbeatModel.trial_id).all()
        finally:
            session.close()
    except Exception:
        return None
    return {int(row[0]) for row in rows}


def _dead_running_trials(
    study: optuna.Study, states: frozenset[TrialState], grace_period: float | None
) -> list[optuna.trial.FrozenTrial]:
    """Return the RUNNING trials of the study whose worker is gone.

    With heartbeats (``grace_period`` set), a trial is dead when its last heartbeat is
    older than ``grace_period``; a trial that never recorded one (its worker ran without
    heartbeats) is dead if ``RUNNING`` is in ``states`` and it started more than
    ``grace_period`` ago. Without heartbeats every RUNNING trial is dead if ``RUNNING`` is
    in ``states``: the caller says that no other worker runs.
    """
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return []
    if grace_period is None:
        return running if TrialState.RUNNING in states else []
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    if not isinstance(backend, optuna.storages.RDBStorage):
        return []
    stale = set(backend._get_stale_trial_ids(study._study_id))
    with_heartbeat = _heartbeat_trial_ids(storage)
    now = datetime.datetime.now()
    dead = []
    for trial in running:
        if trial._trial_id in stale or (
            TrialState.RUNNING in states
            and with_heartbeat is not None
            and trial._trial_id not in with_heartbeat
            and trial.datetime_start is not None
            and (now - trial.datetime_start).total_seconds() > grace_period
        ):
            dead.append(trial)
    return dead


def _requeue_failed_trials(
    study: optuna.Study,
    states: frozenset[TrialState],
    grace_period: float | None,
    failed_ids: frozenset[int] = frozenset(),
) -> None:
    """Fail the dead RUNNING trials and queue every failed trial once (under the lock).

    ``failed_ids`` are trials that Optuna failed because their heartbeat stopped; they are
    queued again like the dead trials this function fails itself.
    """
    storage = study._storage
    marked = set(failed_ids)
    for trial in _dead_running_trials(study, states, grace_period):
        trial_id = trial._trial_id

        def mark_failed(trial_id: int = trial_id) -> None:
            storage.set_trial_state_values(trial_id, TrialState.FAIL)

        try:
            _retry_on_schema_race(mark_failed, f"mark the dead trial {trial.number} as failed")
        except RuntimeError:
            # Another worker finished or failed it first: then it is no longer ours to fail
            # (Optuna raises UpdateFinishedTrialError, a plain RuntimeError before 4.9).
            if not storage.get_trial(trial_id).state.is_finished():
                raise
        else:
            marked.add(trial_id)

    trials = study.get_trials(deepcopy=False)
    # Identities of trials that finished or that will still run.
    settled: set[int] = set()
    failed: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        identity = _trial_identity(trial)
        if trial.state == TrialState.FAIL and (
            TrialState.FAIL in states or trial._trial_id in marked
        ):
            failed.setdefault(identity, []).append(trial)
        elif trial.state in (
            TrialState.COMPLETE,
            TrialState.PRUNED,
            TrialState.WAITING,
            TrialState.RUNNING,
        ):
            settled.add(identity)

    for identity in sorted(failed.keys() - settled):
        runs = failed[identity]  # the failed trial and its failed re-runs, oldest first
        last = runs[-1]
        params = {**last.system_attrs.get("fixed_params", {}), **last.params}
        intermediate: dict[int, float] = {}
        system_attrs: dict[str, Any] = {"fixed_params": params}
        for run in runs:
            intermediate.update(run.intermediate_values)
            system_attrs.update(
                (key, value)
                for key, value in run.system_attrs.items()
                if key.startswith(_CARRIED_SYSTEM_ATTR_PREFIXES)
            )
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                system_attrs=system_attrs,
                user_attrs={_ORIG_NUMBER_KEY: identity},
                intermediate_values=intermediate,
            )
        )


# The RDBStorage argument of the callback for trials whose heartbeat stopped: Optuna 4.9
# renamed failed_trial_callback (which 6.0 removes) to heartbeat_stale_trial_callback.
_STALE_TRIAL_CALLBACK = (
    "heartbeat_stale_trial_callback"
    if "heartbeat_stale_trial_callback"
    in inspect.signature(optuna.storages.RDBStorage.__init__).parameters
    else "failed_trial_callback"
)


def _open_study(
    study_args: dict[str, Any],
    storage: _StudyStorage,
    states: frozenset[TrialState],
    heartbeat_interval: int | None,
    grace_period: int | None,
) -> optuna.Study:
    """Create or load the study, with heartbeats and a callback re-queueing dead trials."""
    args = dict(study_args)
    url = args["storage"]
    grace = None
    callback = None
    if heartbeat_interval is not None:
        grace = grace_period if grace_period is not None else 2 * heartbeat_interval

        def requeue_stale(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            # Optuna failed a trial whose heartbeat stopped, at the start of a new trial of
            # this worker: queue it again the way resume_study does.
            with storage.lock():
                _requeue_failed_trials(study, states, grace, frozenset({trial._trial_id}))

        callback = requeue_stale

    callback_argument: dict[str, Any] = {_STALE_TRIAL_CALLBACK: callback}

    def make_storage() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=storage.engine_kwargs(),
                heartbeat_interval=heartbeat_interval,
                grace_period=grace,
                **callback_argument,
            )

    shown = _hide_password(url)
    args["storage"] = _retry_on_schema_race(make_storage, f"open the study storage {shown}")
    study: optuna.Study = _retry_on_schema_race(
        lambda: optuna.create_study(**args), f"create or load the study in {shown}"
    )
    return study


def _check_heartbeat(heartbeat_interval: int | None, grace_period: int | None) -> None:
    for name, value in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(
                f"expected '{name}' to be a positive number of seconds or None, got {value!r}"
            )
    if grace_period is not None and heartbeat_interval is None:
        raise ValueError(
            f"'grace_period' ({grace_period}) needs 'heartbeat_interval', which is None"
        )
    if (
        grace_period is not None
        and heartbeat_interval is not None
        and grace_period <= heartbeat_interval
    ):
        raise ValueError(
            f"expected 'grace_period' to be longer than 'heartbeat_interval' "
            f"({heartbeat_interval}), got {grace_period}: a live trial would look dead"
        )


def resume_study(
    study_args: dict[str, Any],
    failed_states: Sequence[TrialState] = (TrialState.FAIL,),
    backup_study: bool = True,
    *,
    heartbeat_interval: int | None = DEFAULT_HEARTBEAT_INTERVAL,
    grace_period: int | None = None,
) -> optuna.Study:
    """Load a study stored in SQLite or PostgreSQL and queue its failed trials to run again.

    The steps are:

    1. Back up the study, unless ``backup_study`` is false: an SQLite database is copied to
       ``<stem>_bkp-<n><suffix>`` (``n`` counts up from 0); a study on a PostgreSQL server
       is copied to the study ``<study_name>_bkp-<n>`` in the same database.
    2. Load (or create) the study with ``optuna.create_study(**study_args)``, through an
       :py:class:`optuna.storages.RDBStorage` that records a heartbeat of every running
       trial every ``heartbeat_interval`` seconds. A study without trials is returned as it
       is.
    3. Every completed and pruned trial is kept as it is, including re-run trials (those
       with the ``"hl:id"`` user attribute), with all their attributes.
    4. ``RUNNING`` trials whose worker is dead are marked as failed: those whose heartbeat
       stopped more than ``grace_period`` seconds ago, and, if ``failed_states`` holds
       ``TrialState.RUNNING``, those that never recorded a heartbeat and started more than
       ``grace_period`` seconds ago. A trial whose worker still beats is left alone, so
       workers can join a study that others are running.
    5. Trials whose state is in ``failed_states`` (and those failed in step 4) are queued
       again: same parameters, the intermediate values they had reported (so the pruner
       decides as if the trial had never stopped), and the user attribute ``"hl:id"`` set
       to the number of the trial they stand for. A trial that was already re-run to
       completion (or pruned), or that is already queued or running again, is not queued
       again; each failed trial is queued once. :py:meth:`OptunaPlugin.configure_model`
       names the model after ``"hl:id"``, so the re-run trial resumes from the checkpoints
       of the failed one.

    Unlike rebuilding the study, this keeps the trial numbers, so new trials never reuse
    the number (and the checkpoint folder) of an earlier one, and the failed trials stay in
    the history as failures.

    Several workers may run the study at once, each calling this function, on one machine
    (SQLite) or on many (PostgreSQL): the steps run under an exclusive lock (for SQLite a
    ``flock`` on ``<database>.lock``, for PostgreSQL an advisory lock of the study held in
    the server), opening a database that other workers are creating at the same moment is
    retried, and while the study optimizes, a trial whose heartbeat stops is failed by
    Optuna and queued again by the worker that noticed it. Every worker must use heartbeats
    (all going through this function does that): without them a live trial cannot be told
    from a dead one. The workers' clocks must agree (heartbeats are compared with the
    time of the worker that reads them).

    Example:
        .. code-block:: python

            study = resume_study(
                {
                    "study_name": "tuning",
                    "storage": "sqlite:///tuning.db",
                    "load_if_exists": True,
                    "sampler": restore_sampler(chkpt_root) or optuna.samplers.TPESampler(seed=1),
                },
                failed_states=(TrialState.FAIL, TrialState.RUNNING),
            )

    Args:
        study_args: keyword arguments for :py:func:`optuna.create_study`. ``storage`` must be
            an SQLite URL (``"sqlite:///<path>"``) or a PostgreSQL URL
            (``"postgresql+psycopg://<user>@<host>:<port>/<database>"``, with the driver
            installed) and ``load_if_exists`` must be true.
        failed_states: the trial states that count as failures. Add
            ``TrialState.RUNNING`` when the study was killed by workers that ran without
            heartbeats, which leaves their last trial running forever.
        backup_study: back up the database before changing it.
        heartbeat_interval: seconds between two heartbeats of a running trial; None turns
            heartbeats off, and then every ``RUNNING`` trial counts as dead when
            ``failed_states`` holds ``TrialState.RUNNING`` (only safe with one worker).
        grace_period: seconds without a heartbeat after which a running trial is dead;
            None means twice ``heartbeat_interval``. A killed trial is queued again once
            this time has passed.

    Returns:
        The study, with the failed trials queued.

    Raises:
        TypeError: if ``study_args`` is not a dict, its ``storage`` is not a string, or
            ``failed_states`` holds something other than trial states.
        StudyArgumentsError: (a :py:class:`TypeError` and :py:class:`ValueError`) if
            ``storage`` is missing.
        LoadIfExistsError: (a :py:class:`KeyError` and :py:class:`ValueError`) if
            ``load_if_exists`` is missing or not True.
        ValueError: if ``storage`` is neither an SQLite file URL nor a PostgreSQL URL,
            ``failed_states`` holds a state other than ``FAIL`` and ``RUNNING``, or
            ``heartbeat_interval`` or ``grace_period`` is not a positive integer (or the
            grace period is not longer than the interval).
        RuntimeError: if the database still cannot be opened after several tries.
    """
    storage = _study_storage(study_args)
    states = _check_failed_states(failed_states)
    _check_heartbeat(heartbeat_interval, grace_period)
    grace = None
    if heartbeat_interval is not None:
        grace = grace_period if grace_period is not None else 2 * heartbeat_interval

    with storage.lock():
        if backup_study:
            storage.backup()
        study = _open_study(study_args, storage, states, heartbeat_interval, grace_period)
        if study.get_trials(deepcopy=False):
            _requeue_failed_trials(study, states, grace)
    return study


def checkpoint_sampler(trial: optuna.Trial, chkpt_root: pathlib.Path) -> pathlib.Path:
    """Save the sampler of the trial's study to ``chkpt_root/sampler_trial-<n>.pkl``.

    Call it from the objective function once the trial has drawn its parameters, so
    :py:func:`restore_sampler` can give a resumed study the sampler of the last trial with
    all its state (random state and caches included): the resumed study draws what the
    uninterrupted one would have drawn. Every built-in Optuna sampler can be saved; what
    pickle cannot carry is written as an explicit record instead (a thread lock, such as the
    one of the NSGA-II and NSGA-III samplers, becomes a fresh lock on load; a tensor of the
    GP sampler becomes its numbers). The file is pickled to a temporary file in the same
    folder and then renamed, so a crash never leaves a partial file. ``chkpt_root`` is
    created if needed.

    Args:
        trial: the current trial; ``n`` is its number.
        chkpt_root: the folder of the sampler checkpoints.

    Returns:
        The path of the checkpoint.

    Raises:
        TypeError: if the sampler holds something that can neither be pickled nor recorded
            (a user-defined sampler may); the previous checkpoint is left as it was.
    """
    chkpt_root.mkdir(parents=True, exist_ok=True)
    path = chkpt_root / f"sampler_trial-{trial.number}.pkl"
    sampler = trial.study.sampler

    def write(file: IO[bytes]) -> None:
        try:
            _SamplerPickler(file).dump(sampler)
        except (pickle.PicklingError, TypeError, AttributeError) as error:
            raise TypeError(
                f"cannot checkpoint the sampler {type(sampler).__name__} to {path}: {error}"
            ) from error

    write_atomically(path, write)
    return path


_LOCK_TYPES = {_thread.LockType: "lock", _thread.RLock: "rlock"}


class _SamplerPickler(pickle.Pickler):
    """Pickles a sampler, writing what pickle cannot carry as explicit records.

    A record is a tuple of a kind and plain data: ``("lock",)`` and ``("rlock",)`` for a
    thread lock (rebuilt unlocked), ``("tensor", array, requires_grad)`` for a torch tensor
    and ``("torch.dtype", name)`` for a torch dtype. :py:class:`_SamplerUnpickler` rebuilds
    them from the data alone.
    """

    def __init__(self, file: IO[bytes]) -> None:
        # Protocol 5 would write numpy arrays through numpy's buffer functions, which the
        # loader does not allow; protocol 4 writes them as plain data.
        super().__init__(file, protocol=4)

    def persistent_id(self, obj: Any) -> tuple[Any, ...] | None:
        kind = _LOCK_TYPES.get(type(obj))
        if kind is not None:
            return (kind,)
        torch = sys.modules.get("torch")  # a sampler holds tensors only if torch is loaded
        if torch is None:
            return None
        if isinstance(obj, torch.dtype):
            return ("torch.dtype", str(obj).removeprefix("torch."))
        if isinstance(obj, torch.Tensor):
            tensor = obj.detach().cpu()
            try:
                array = tensor.numpy()
            except TypeError as error:
                raise TypeError(f"it holds a {tensor.dtype} tensor ({error})") from error
            return ("tensor", array.copy(), bool(obj.requires_grad))
        return None


# What a sampler checkpoint may reference: the classes and functions *defined* in Optuna's
# sampler packages (not names they import), and the few numpy/builtin types their state
# holds. Anything else (os.system, optuna storages, torch.load, getattr, ...) is refused.
_SAMPLER_MODULE_PREFIXES = (
    "optuna.samplers.",
    "optuna.distributions",
    "optuna.search_space.",
    "optuna._gp.",
    "optuna._transform",
)
_SAFE_GLOBALS = {
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "object"),
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("copyreg", "_reconstructor"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.random._pickle", "__randomstate_ctor"),
    ("numpy.random._pickle", "__bit_generator_ctor"),
    ("numpy.random._pickle", "__generator_ctor"),
    ("numpy.random._mt19937", "MT19937"),
    ("numpy.random._pcg64", "PCG64"),
    ("numpy.random._philox", "Philox"),
    ("numpy.random._sfc64", "SFC64"),
    ("numpy.random.mtrand", "RandomState"),
    ("numpy.random._generator", "Generator"),
}


def _is_sampler_module(module: str) -> bool:
    return any(module == p.rstrip(".") or module.startswith(p) for p in _SAMPLER_MODULE_PREFIXES)


class _SamplerUnpickler(pickle.Unpickler):
    """Unpickles only Optuna sampler types and what their state holds."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        if _is_sampler_module(module) and "." not in name:
            found = super().find_class(module, name)
            defined_in = getattr(found, "__module__", None)
            if (isinstance(found, type) or inspect.isfunction(found)) and _is_sampler_module(
                str(defined_in)
            ):
                return found
        raise pickle.UnpicklingError(
            f"{module}.{name} is not an Optuna sampler type or part of a sampler's state"
        )

    def persistent_load(self, pid: Any) -> Any:
        match pid:
            case ("lock",):
                return threading.Lock()
            case ("rlock",):
                return threading.RLock()
            case ("torch.dtype", str(name)):
                import torch

                dtype = getattr(torch, name, None)
                if isinstance(dtype, torch.dtype):
                    return dtype
            case ("tensor", np.ndarray() as array, bool(requires_grad)):
                # Numbers only (no objects); only floats can require gradients.
                if array.dtype.kind in ("fc" if requires_grad else "biufc"):
                    import torch

                    return torch.from_numpy(array.copy()).requires_grad_(requires_grad)
        raise pickle.UnpicklingError(f"{pid!r} is not a record of a sampler's state")


def load_sampler_file(path: pathlib.Path) -> optuna.samplers.BaseSampler:
    """Load a sampler checkpoint written by :py:func:`checkpoint_sampler`, safely.

    The file is unpickled with an unpickler that only builds Optuna sampler types, the
    numpy and builtin types their state holds, and the records :py:func:`checkpoint_sampler`
    writes for what pickle cannot carry (a fresh thread lock, a tensor made from its
    numbers); a file that references anything else (a function that runs code, an Optuna
    storage, ...) is refused before it can run it.

    Args:
        path: the sampler checkpoint.

    Returns:
        The sampler.

    Raises:
        pickle.UnpicklingError: if the file references a type outside the allowed ones, holds
            an unknown record, or does not hold a sampler.
        OSError: if the file cannot be read.
        Exception: a forged file may make the allowed types fail with any error while they
            are built; :py:func:`restore_sampler` refuses such a file.
    """
    with path.open("rb") as file:
        sampler = _SamplerUnpickler(file).load()
    if not isinstance(sampler, optuna.samplers.BaseSampler):
        raise pickle.UnpicklingError(
            f"the file holds a {type(sampler).__name__}, not an Optuna sampler"
        )
    return sampler


def restore_sampler(chkpt_root: pathlib.Path) -> optuna.samplers.BaseSampler | None:
    """Load the sampler saved by the highest-numbered trial in ``chkpt_root``.

    Only files named ``sampler_trial-<n>.pkl`` (as written by :py:func:`checkpoint_sampler`)
    are considered. The file is read with :py:func:`load_sampler_file`, which refuses
    anything but Optuna sampler types: a refused or unreadable file is reported (a
    ``RuntimeWarning`` naming the file and the reason) and ``None`` is returned, so the study
    goes on with a fresh sampler.

    Args:
        chkpt_root: the folder of the sampler checkpoints.

    Returns:
        The sampler, or None if the folder holds no sampler checkpoint (or does not exist)
        or the newest one was refused, in which case build a fresh sampler.
    """
    if not chkpt_root.is_dir():
        return None
    numbered = [
        (int(match.group(1)), path)
        for path in chkpt_root.iterdir()
        if (match := _SAMPLER_FILE.match(path.name)) is not None
    ]
    if not numbered:
        return None
    _, last = max(numbered)
    try:
        return load_sampler_file(last)
    except Exception as error:  # a hostile file can make the allowed types fail anyhow
        warnings.warn(
            f"refused the sampler checkpoint {last}: {error}; the study goes on with a fresh "
            "sampler",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


_FINISHED_STATES = (TrialState.COMPLETE, TrialState.PRUNED)


def remove_finished_trial_checkpoints(
    study: optuna.Study,
    chkpt_root: pathlib.Path,
    save_name: str,
    keep_best_trial: bool = True,
) -> list[pathlib.Path]:
    """Delete the checkpoint folders of the study's finished (complete or pruned) trials.

    A trial's folder is ``<chkpt_root>/<save_name>_trial-<n>`` (see
    :py:meth:`OptunaPlugin.configure_model`). Folders of failed, running or waiting trials
    are kept: :py:func:`resume_study` re-runs them from their checkpoints. Within a trial's
    folder the Trainer's own retention (``chkpt_keep_last``, ``chkpt_keep_best``) already
    prunes the checkpoints while it trains.

    Args:
        study: the study.
        chkpt_root: the ``chkpt_root`` the trials were trained with.
        save_name: the model's save name, without the ``_trial-<n>`` suffix.
        keep_best_trial: keep the folder of the best trial (single-objective studies).

    Returns:
        The folders deleted.
    """
    keep: set[int] = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state not in _FINISHED_STATES:
            keep.add(_trial_identity(trial))
    if keep_best_trial and len(study.directions) == 1:
        with contextlib.suppress(ValueError):  # no completed trial
            keep.add(_trial_identity(study.best_trial))
    removed = []
    for trial in study.get_trials(deepcopy=False, states=_FINISHED_STATES):
        identity = _trial_identity(trial)
        folder = chkpt_root / f"{save_name}_trial-{identity}"
        if identity in keep or not folder.is_dir():
            continue
        shutil.rmtree(folder)
        removed.append(folder)
    return removed


class UnknownSuggestionTypeError(KeyError, ValueError):
    """:py:meth:`OptunaPlugin.suggest` was given a type name it does not know.

    A :py:class:`KeyError` as Helios 1.2.7 documents, and a :py:class:`ValueError` (the
    argument has a bad value). Its ``str()`` is the message itself, not its ``repr`` as for
    a plain :py:class:`KeyError`.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@PLUGIN_REGISTRY.register
class OptunaPlugin(Plugin):
    """Connect a training run to an Optuna trial: report metrics, prune, resume.

    The plug-in:

    * registers :py:class:`optuna.TrialPruned` as an exception that
      :py:meth:`~helios.trainer.Trainer.fit` re-raises (:py:meth:`configure_trainer`),
    * appends ``_trial-<n>`` to the model's save name so an interrupted trial resumes from
      its own checkpoints (:py:meth:`configure_model`),
    * reports ``model.metrics[metric_name]`` to the trial (:py:meth:`report_metrics`, which
      the model calls when its metrics are ready, e.g. in ``on_validation_end``),
    * stops training when Optuna prunes the trial (:py:meth:`should_training_stop`).

    When a pruned run is not distributed, the plug-in calls the model's
    :py:meth:`~helios.model.model.Model.on_training_end` itself and then raises
    :py:class:`optuna.TrialPruned` from :py:meth:`on_training_end`, so the model's hook runs
    once and ``fit`` re-raises the exception. In a distributed run training simply stops;
    call :py:meth:`check_pruned` after ``fit`` to raise it.

    Example:
        .. code-block:: python

            def objective(trial: optuna.Trial) -> float:
                model, datamodule, trainer = ...
                plugin = OptunaPlugin(trial, "accuracy")
                plugin.configure_trainer(trainer)
                plugin.configure_model(model)
                trainer.fit(model, datamodule)
                plugin.check_pruned()
                return model.metrics["accuracy"]

    Args:
        trial: the trial of the run.
        metric_name: the key of :py:attr:`helios.model.model.Model.metrics` reported to the
            trial.

    Raises:
        TypeError: if ``trial`` is not an Optuna trial or ``metric_name`` is not a string.
    """

    plugin_id = "optuna"

    def __init__(self, trial: optuna.Trial, metric_name: str) -> None:
        super().__init__(self.plugin_id)
        if not isinstance(trial, optuna.trial.BaseTrial):
            raise TypeError(f"expected 'trial' to be an optuna Trial, got {type(trial).__name__}")
        if not isinstance(metric_name, str) or not metric_name:
            raise TypeError(f"expected 'metric_name' to be a non-empty string, got {metric_name!r}")
        self._trial = trial
        self._metric_name = metric_name
        self._last_cycle = 0
        self._should_stop = False
        self._needs_check = False
        self._carried_steps: set[int] = set()

        self.unique_overrides.should_training_stop = True

    @property
    def trial(self) -> optuna.Trial:
        """The trial of the run."""
        return self._trial

    @trial.setter
    def trial(self, t: optuna.Trial) -> None:
        self._trial = t

    @property
    def metric_name(self) -> str:
        """The key of the model's metrics reported to the trial."""
        return self._metric_name

    def _is_rank_zero(self) -> bool:
        """Whether this process talks to the trial (always, when not distributed)."""
        return not self.is_distributed or dist.get_global_rank() == 0

    def configure_trainer(self, trainer: RunTrainer) -> None:
        """Register the plug-in and make ``fit`` re-raise :py:class:`optuna.TrialPruned`.

        Args:
            trainer: the trainer.
        """
        self._register_in_trainer(trainer)
        self._append_train_exceptions(optuna.TrialPruned, trainer)

    def configure_model(self, model: Model) -> None:
        """Append ``_trial-<n>`` to the model's save name.

        ``n`` is the trial number, or, for a trial re-queued by :py:func:`resume_study`,
        the number of the failed trial it replaces, so the new trial picks up that trial's
        checkpoints. Calling this twice does not add the suffix twice.

        Args:
            model: the model.
        """
        suffix = f"_trial-{_trial_identity(self._trial)}"
        if not model.save_name.endswith(suffix):
            model._save_name += suffix

    def suggest(self, type_name: str, name: str, **kwargs: Any) -> Any:
        """Suggest a parameter value through ``trial.suggest_<type_name>``.

        This lets the kind and range of each parameter come from a config file or the
        command line. In a distributed run, every rank must call it in the same order: rank
        0 asks the trial and the value is broadcast to the other ranks.

        Example:
            .. code-block:: python

                lr = plugin.suggest("float", "lr", low=1e-4, high=1e-1, log=True)
                width = plugin.suggest("categorical", "width", choices=[16, 32, 64])

        Args:
            type_name: ``"categorical"``, ``"float"`` or ``"int"``.
            name: the name of the parameter.
            **kwargs: the arguments of the matching ``suggest_*`` method of
                :py:class:`optuna.Trial`.

        Returns:
            The suggested value.

        Raises:
            UnknownSuggestionTypeError: (a :py:class:`KeyError`, as Helios 1.2.7 documents,
                and a :py:class:`ValueError`) if ``type_name`` is not one of the allowed
                names.
        """
        suggesters: dict[str, Callable[..., Any]] = {
            "categorical": self._trial.suggest_categorical,
            "float": self._trial.suggest_float,
            "int": self._trial.suggest_int,
        }
        if type_name not in suggesters:
            raise UnknownSuggestionTypeError(
                f"unknown suggestion type '{type_name}' for parameter '{name}'; "
                f"expected one of {', '.join(repr(k) for k in sorted(suggesters))}"
            )
        if not self.is_distributed:
            return suggesters[type_name](name, **kwargs)
        value = suggesters[type_name](name, **kwargs) if self._is_rank_zero() else None
        return dist.broadcast_object(value, src=0)

    def setup(self) -> None:
        """Check that a distributed run stores the study in a database.

        In a distributed run the processes share the trial through the study's storage,
        so it must be an :py:class:`optuna.storages.RDBStorage` (e.g. SQLite).

        Raises:
            ValueError: if the run is distributed and the storage is not database-backed.
        """
        if not self.is_distributed or not isinstance(self._trial, optuna.Trial):
            return
        storage = self._trial.study._storage
        backend = getattr(storage, "_backend", storage)
        if not isinstance(backend, optuna.storages.RDBStorage):
            raise ValueError(
                "distributed training with OptunaPlugin needs the study to be stored "
                "in a database (e.g. storage='sqlite:///study.db'), got storage of type "
                f"{type(backend).__name__}"
            )

    def on_training_start(self) -> None:
        """Reset the pruning state, so the plug-in can be reused for another run.

        Also reads the steps the trial already holds: a trial that :py:func:`resume_study`
        queued again carries the intermediate values its failed run reported, and a step
        that the resumed training reports again keeps its first value (as Optuna does),
        without Optuna's warning about it.
        """
        self._last_cycle = 0
        self._should_stop = False
        self._needs_check = False
        self._carried_steps = set()
        if isinstance(self._trial, optuna.Trial) and self._is_rank_zero():
            frozen = self._trial.study._storage.get_trial(self._trial._trial_id)
            self._carried_steps = set(frozen.intermediate_values)

    def report_metrics(self, validation_cycle: int) -> None:
        """Report the model's metric to the trial.

        Call it from the model once its metrics are ready, typically at the end of
        :py:meth:`~helios.model.model.Model.on_validation_end`; in a distributed run, call
        it on every rank. Only rank 0 reports; make sure the metric is synchronised across
        ranks. If ``metric_name`` is not in :py:attr:`~helios.model.model.Model.metrics`,
        nothing is reported.

        Args:
            validation_cycle: the step the value is reported at.
        """
        # Set even without a value, so all ranks reach the pruning check together.
        self._needs_check = True
        metrics = self.trainer.model.metrics
        if self._metric_name not in metrics:
            return
        if self._is_rank_zero() and validation_cycle not in self._carried_steps:
            self._trial.report(float(metrics[self._metric_name]), validation_cycle)
        self._last_cycle = validation_cycle

    def should_training_stop(self) -> bool:
        """Tell whether Optuna pruned the trial.

        The pruner is only asked after a :py:meth:`report_metrics` call, so the checks the
        trainer makes between validation cycles cost nothing. In a distributed run rank 0
        asks and broadcasts the answer; when pruned, it also records the user attributes
        ``"ddp_hl:pruned"`` and ``"ddp_hl:cycle"`` that :py:meth:`check_pruned` reads.

        Returns:
            True if the trial was pruned.
        """
        if not self._needs_check:
            return self._should_stop
        self._needs_check = False

        is_rank_zero = self._is_rank_zero()
        flag = bool(self._trial.should_prune()) if is_rank_zero else False
        if self.is_distributed:
            flag = bool(dist.broadcast_object(flag, src=0))
        if flag and not self._should_stop and is_rank_zero:
            self._trial.set_user_attr(_PRUNED_KEY, True)
            self._trial.set_user_attr(_CYCLE_KEY, self._last_cycle)
        self._should_stop = flag
        return flag

    def on_training_end(self) -> None:
        """Raise :py:class:`optuna.TrialPruned` if the (non-distributed) trial was pruned.

        The model's :py:meth:`~helios.model.model.Model.on_training_end` is called first,
        so whatever it logs at the end of training is logged for pruned trials too. The
        trainer calls the plug-ins before the model, so the exception keeps the model's hook
        from running a second time.

        Raises:
            optuna.TrialPruned: if the trial was pruned.
        """
        if self.is_distributed:
            return
        if self._needs_check:
            self.should_training_stop()
        if self._should_stop:
            self.trainer.model.on_training_end()
            raise optuna.TrialPruned(f"Pruned on validation cycle {self._last_cycle}")

    def check_pruned(self) -> None:
        """Raise :py:class:`optuna.TrialPruned` if a distributed run pruned the trial.

        Call it after :py:meth:`~helios.trainer.Trainer.fit`. The trial is read again from
        the study's storage, where the training processes recorded the decision.

        Raises:
            optuna.TrialPruned: if the trial was pruned.
        """
        if not isinstance(self._trial, optuna.Trial):
            return
        storage = self._trial.study._storage
        backend = getattr(storage, "_backend", storage)
        frozen = backend.get_trial(self._trial._trial_id)
        attrs = frozen.user_attrs
        if attrs.get(_PRUNED_KEY) and _CYCLE_KEY in attrs:
            raise optuna.TrialPruned(f"Pruned on validation cycle {attrs[_CYCLE_KEY]}")

    def state_dict(self) -> dict[str, Any]:
        """Return the trial's parameters, stored in checkpoints (as in Helios 1.2.7).

        Returns:
            ``trial.params``: the name and value of every parameter suggested so far.
        """
        return dict(self._trial.params)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Check that a checkpoint was written by a trial with the same parameters.

        Parameters the current trial has not suggested yet are not compared, so a model
        that suggests parameters in ``setup`` and after loading resumes fine.

        Args:
            state_dict: the parameters returned by :py:meth:`state_dict`.

        Raises:
            RuntimeError: if a parameter of the checkpoint differs from the trial's.
        """
        current = self._trial.params
        differing = sorted(
            k for k in state_dict.keys() & current.keys() if state_dict[k] != current[k]
        )
        if differing:
            details = ", ".join(f"{k}: {state_dict[k]!r} != {current[k]!r}" for k in differing)
            raise RuntimeError(
                "the checkpoint was written by a trial with different parameters than "
                f"trial {_trial_identity(self._trial)} ({details}); remove the stale "
                "checkpoint folder or give the model another save name"
            )
