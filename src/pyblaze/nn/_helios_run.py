"""The helios model that runs a pyblaze engine: :py:class:`EngineRun`.

``train`` (see :py:mod:`pyblaze.nn._fit`) hands an :py:class:`EngineRun` and a
:py:class:`~pyblaze.nn._datamodule.LoaderDataModule` to :py:class:`helios.trainer.Trainer`
(EPOCH unit, ``total_steps=epochs``, a validation after every epoch, an empty one without
validation data). The hooks map onto the engine and the PyBlaze callbacks, in helios's
call order (plug-ins always run first)::

    setup                     model (and optimizer state) to the device; DDP when distributed
                              (or, with shard=True, a sharded copy, see _sharded.py); the
                              engine takes the run's precision and clipping
    on_training_start         [val data: the check before training, see _sanity.py];
                              before_training(model, epochs); resumed callback states
    on_training_epoch_start   before_epoch(epoch, num_batches)
    train_step                engine.train_batch(batch, **train_kwargs)
    on_training_batch_end     after_batch(loss)        (loss averaged over ranks)
    on_validation_start       [val data] before_predictions(model, num_val_batches)
    valid_step                engine.eval_batch(batch); outputs kept on the CPU; after_batch(None)
    on_validation_end         [val data] whole-set metrics -> val_*; after_predictions();
                              [eval_train: train_*]; history entry; its numbers -> metrics
    on_training_epoch_end     after_epoch(Evaluation)
    should_training_stop      True once a callback raised CallbackException
    on_training_end           after_training(); verbose CallbackException printed; a
                              sharded copy's full weights go back to the user's model

The work of an epoch is done by an :py:class:`~pyblaze.nn._epoch.EpochRun`; an epoch that
``before_epoch`` stopped is an :py:class:`~pyblaze.nn._epoch.Epoch`, which does nothing.
The epoch's numbers in the model's ``metrics`` table are what helios sends to the
experiment loggers (``valid/<name>``) and ranks checkpoints by (``chkpt_best_metric``).
The model's ``state_dict`` (weights, optimizer states, history so far, callback states) is
what helios checkpoints hold, so a run with ``trainer_options={"chkpt_root": ...,
"chkpt_frequency": n}`` resumes from its newest checkpoint as if never interrupted.

With ``fit(shard=True)`` the model's entry holds only the weights and optimizer states
(``DTensor`` shards in a distributed run, written by every rank through Distributed
Checkpoint); the history and callback states, which may differ between ranks (callbacks
that run on rank 0 only), are an extra checkpoint part of their own, :py:class:`RunRecords`,
written by rank 0 like every unsharded part.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from helios.model import Model
from pyblaze.nn._callback_list import CallbackList
from pyblaze.nn._epoch import Epoch, EpochRun, RunCallbacks, TrainSpec
from pyblaze.nn._placement import ModelPlacement
from pyblaze.nn._recorder import HistoryRecorder
from pyblaze.nn._result_channel import ResultChannel
from pyblaze.nn._sanity import sanity_check
from pyblaze.nn.callbacks.base import CallbackException, PredictionCallback, TrainingCallback

if TYPE_CHECKING:
    from helios.trainer import TrainingState
    from pyblaze.nn._protocols import Engine

_SKIPPED = Epoch()


def _length(loader: Any) -> int | None:
    """The batches of a loader, or ``None`` for a stream (no length)."""
    try:
        return len(loader)
    except TypeError:
        return None


class EngineRun(Model):
    """The helios model that runs an engine and its callbacks (see the module docstring).

    Args:
        engine: the engine.
        spec: the checked arguments of ``train``.
        shard: ``fit(shard=True)``: shard the model in a distributed run, and keep the
            history and callback states in a checkpoint part of their own
            (:py:class:`RunRecords`).
    """

    def __init__(self, engine: Engine, spec: TrainSpec, shard: bool = False) -> None:
        super().__init__(f"pyblaze_{type(engine.model).__name__}")
        self._engine = engine
        self._spec = spec
        optimizers = {
            key: value
            for key, value in sorted(spec.train_kwargs.items())
            if isinstance(value, torch.optim.Optimizer)
        }
        self.placement = ModelPlacement(engine, list(optimizers.values()), shard)
        self._records_apart = shard
        # Where helios looks for networks and optimizers (the run summary, the learning
        # rates sent to the loggers, ``enable_compile``): the plain model and the optimizers.
        self.network = engine.model
        self.optimizers = optimizers
        self.results = ResultChannel()
        self.recorder = HistoryRecorder(engine.collate_losses)
        self._epoch: Epoch = _SKIPPED
        self._callbacks = RunCallbacks(CallbackList([]), CallbackList([]))
        self._stop: CallbackException | None = None
        self._average_losses = False
        self._num_batches: int | None = 0
        self._num_val_batches: int | None = 0
        self._epoch_open = False
        self._resumed_callbacks: dict[str, Any] | None = None
        self._resumed_epoch: dict[str, Any] | None = None
        self._warned_unmatched = False

    # -- state ---------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Return the weights, optimizer states, history and callback states so far.

        ``callbacks`` holds the ``state_dict()`` of the engine and of every callback that
        has one (EarlyStopping, the schedulers, ModelSaverCallback, TensorboardTracker and
        any user callback with ``state_dict``/``load_state_dict``), by position and class.
        ``open_epoch`` holds the batch losses of an epoch the checkpoint was written in
        (a preemption), else ``None``. With ``shard=True`` only ``module`` and
        ``optimizers`` are here (shards in a distributed run); the rest is the state of
        :py:class:`RunRecords`.
        """
        state = {
            "module": self.placement.module.state_dict(),
            "optimizers": [o.state_dict() for o in self.placement.optimizers],
        }
        if not self._records_apart:
            state.update(self.records_state())
        return state

    def records_state(self) -> dict[str, Any]:
        """Return the history so far, the callback states and the open epoch's losses."""
        return {
            "epochs": self.recorder.entries,
            "callbacks": {key: c.state_dict() for key, c in self._stateful_callbacks()},
            "open_epoch": (
                {"losses": list(self.recorder.losses), "sizes": list(self.recorder.sizes)}
                if self._epoch_open
                else None
            ),
        }

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        """Restore what :py:meth:`state_dict` returned (resuming, or a spawned run's result).

        The callbacks get their states after ``before_training`` (which resets them), and
        again after ``before_epoch`` when the checkpoint was written inside an epoch. Full
        weights and optimizer states (a one-file checkpoint) are sharded when this run
        shards the model.

        Raises:
            ValueError: if the state lacks the history: a checkpoint of a ``shard=True``
                fit, resumed by a fit without it.
        """
        if "epochs" not in state_dict and not self._records_apart:
            raise ValueError(
                "the checkpoint was written by a fit with shard=True (its history and "
                "callback states are a part of their own); resume it with shard=True"
            )
        self.placement.load_full_state(state_dict)
        if "epochs" in state_dict:
            self.load_records(state_dict)
            self.send_resumed()

    def load_records(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`records_state` returned."""
        self.recorder.entries = [dict(entry) for entry in state_dict["epochs"]]
        self._resumed_callbacks = state_dict.get("callbacks")
        self._resumed_epoch = state_dict.get("open_epoch")

    def send_resumed(self) -> None:
        """Send a resumed state back to the launching process (a no-op unless spawned).

        A finished run resumed in spawned processes trains nothing and never reaches
        ``on_training_end``: its state goes back now (every rank calls this; a sharded
        model's weights are gathered first, a collective).
        """
        if self._trainer is None or not self.results.is_open:
            return
        full = self.placement.full_state() if self.placement.is_sharded else None
        if self.trainer.rank == 0:
            self.results.send(self._result_state(full))

    def _result_state(self, full: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's whole state, with full weights, for the launching process."""
        if full is None:
            full = {
                "module": self.placement.module.state_dict(),
                "optimizers": [o.state_dict() for o in self.placement.optimizers],
            }
        return {**full, **self.records_state()}

    def finish(self) -> None:
        """Give the user's model a sharded run's weights if the run has not (every rank).

        A finished run that is run again resumes its last checkpoint and trains nothing,
        without ``on_training_end``; its weights are gathered here, after ``fit``.
        """
        if self.placement.is_sharded:
            self.placement.unwrap(self.placement.full_state())
            self.network = self.placement.module

    def _stateful_callbacks(self) -> list[tuple[str, Any]]:
        """The engine and the user's callbacks that have a state, keyed by position/class."""
        found = []
        for index, callback in enumerate([self._engine, *self._spec.callbacks]):
            if callable(getattr(callback, "state_dict", None)) and callable(
                getattr(callback, "load_state_dict", None)
            ):
                found.append((f"{index}.{type(callback).__name__}", callback))
        return found

    def _restore_callbacks(self) -> None:
        """Give the callbacks the states of the checkpoint the run resumed from."""
        saved = self._resumed_callbacks
        if saved is None:
            return
        callbacks = dict(self._stateful_callbacks())
        for key, state in saved.items():
            if key in callbacks:
                callbacks[key].load_state_dict(state)
        unmatched = sorted(set(saved) - set(callbacks))
        if unmatched and not self._warned_unmatched:
            self._warned_unmatched = True
            warnings.warn(
                f"the checkpoint holds states of callbacks {unmatched} (position.class) that "
                "this fit does not have; pass the same callbacks, in the same order, to "
                "resume them",
                stacklevel=2,
            )

    # -- helios hooks ----------------------------------------------------------------------

    def setup(self, fast_init: bool = False) -> None:
        """Move the model and its optimizer state to the device; wrap it for DDP or shard it."""
        self.recorder = HistoryRecorder(self._engine.collate_losses)
        self.placement.place(self.device, self.is_distributed, self.trainer.precision.name)
        # What helios's checkpoints see as the network: sharded or not.
        self.network = self.placement.module
        spec = self._spec
        self._engine.start_run(self.trainer.precision, spec.clip_norm, spec.clip_value)
        # Losses go through helios's loss table only to be averaged over ranks.
        self._average_losses = self.is_distributed

    def train(self) -> None:
        """Put the model in training mode."""
        self._engine.model.train()

    def eval(self) -> None:
        """Put the model in evaluation mode."""
        self._engine.model.eval()

    def on_training_start(self) -> None:
        """Select the callbacks of this process and call ``before_training``."""
        on_rank_zero = self.trainer.rank == 0
        user, engine = self._spec.callbacks, self._engine
        self._callbacks = RunCallbacks(
            CallbackList.select(TrainingCallback, engine, user, on_rank_zero),
            CallbackList.select(PredictionCallback, engine, user, on_rank_zero),
        )
        self._stop = None
        self._epoch = _SKIPPED
        datamodule = self.trainer.datamodule
        self._num_batches = _length(datamodule.train_dataloader()[0])
        valid = datamodule.valid_dataloader()
        self._num_val_batches = _length(valid[0]) if valid is not None else 0
        if self._spec.val_data is not None:
            sanity_check(self._engine, self.placement.module, self._spec, self.device)
        self._callbacks.training.call("before_training", self.placement.module, self._spec.epochs)
        self._restore_callbacks()
        if self._resumed_epoch is not None:
            # Resumed inside an epoch: helios may end it (an interrupted validation)
            # without calling on_training_epoch_start again.
            self._epoch = self._new_epoch()

    def on_training_epoch_start(self, current_epoch: int) -> None:
        """Call ``before_epoch``; a CallbackException skips the epoch and stops training."""
        stop = self._callbacks.training.call_stoppable(
            "before_epoch", current_epoch - 1, self._num_batches
        )
        if stop is not None:
            self._stop = self._stop or stop
            self._epoch = _SKIPPED
            return
        if self._resumed_epoch is not None:
            self._restore_callbacks()  # their per-epoch state, which before_epoch reset
        self._epoch = self._new_epoch()

    def _new_epoch(self) -> EpochRun:
        """Start the records of an epoch (with the losses of a resumed, open epoch)."""
        epoch = EpochRun(
            self._engine,
            self.placement.module,
            self._spec,
            self.device,
            self._callbacks,
            self.recorder,
            self._num_val_batches,
        )
        self._epoch_open = True
        if self._resumed_epoch is not None:
            self.recorder.losses.extend(self._resumed_epoch["losses"])
            self.recorder.sizes.extend(self._resumed_epoch["sizes"])
        return epoch

    def train_step(self, batch: Any, state: TrainingState) -> None:
        """Train on the batch with the engine; its loss goes to helios's loss table.

        There helios's non-finite guard reads it (``Trainer(nonfinite_guard=True)``, the
        default: a NaN or infinite loss stops ``fit`` with
        :py:class:`~helios.trainer.NonFiniteError` before any checkpoint or callback
        saves it), and in a distributed run it is averaged over the ranks.
        """
        loss = self._epoch.train(batch)
        if isinstance(loss, float | int) and not isinstance(loss, bool):
            if self._average_losses:
                self._loss_items["loss"] = torch.tensor(float(loss), device=self.device)
            else:  # a number: the guard reads it as it is, at no cost
                self._loss_items["loss"] = loss  # type: ignore[assignment]
        elif isinstance(loss, torch.Tensor) and loss.numel() == 1:
            self._loss_items["loss"] = loss.detach()

    def on_training_batch_end(self, state: TrainingState, should_log: bool = False) -> None:
        """Record the batch and call ``after_batch`` (the loss averaged over ranks)."""
        loss = self._epoch.loss
        if self._average_losses:
            super().on_training_batch_end(state, should_log)
            if "loss" in self._loss_items:
                loss = float(self._loss_items["loss"].item())
        self._epoch.end_batch(loss)

    def should_training_stop(self) -> bool:
        """Stop once a callback raised :py:class:`CallbackException`."""
        return self._stop is not None

    def on_validation_start(self, validation_cycle: int) -> None:
        """Call ``before_predictions`` for the validation of this epoch (with val data)."""
        super().on_validation_start(validation_cycle)
        if self._spec.val_data is not None:
            self._epoch.start_validation()

    def valid_step(self, batch: Any, step: int) -> None:
        """Compute the model's outputs for a validation batch; keep them on the CPU."""
        self._epoch.validate(batch)

    def on_validation_end(self, validation_cycle: int) -> None:
        """Compute the epoch's metrics; put them in the helios ``metrics`` table.

        With validation data: the validation metrics on the whole set, then
        ``after_predictions``. Then the training metrics (``eval_train``) and the history
        entry; the entry's numbers (``train_loss``, ``val_*``, ``train_*``) become the
        model's :py:attr:`~helios.model.Model.metrics`, which helios sends to the
        experiment loggers and ranks checkpoints by (``chkpt_best_metric``).
        """
        super().on_validation_end(validation_cycle)
        if self._spec.val_data is not None:
            self._epoch.end_validation()
        evaluation = self._epoch.conclude()
        if evaluation is not None:
            self._metrics.clear()
            self._metrics.update(evaluation.to_dict())

    def on_training_epoch_end(self, current_epoch: int) -> None:
        """Record the epoch in the history and call ``after_epoch``."""
        metrics = self._epoch.finish()
        self._epoch_open = False
        self._resumed_epoch = None
        if metrics is not None:
            self._stop = self._stop or self._callbacks.training.call_stoppable(
                "after_epoch", metrics
            )

    def on_training_end(self) -> None:
        """Call ``after_training``; print a verbose stop message; send back the results.

        A sharded model's full weights and optimizer states are gathered (every rank) and
        loaded into the user's model and optimizers.
        """
        self._callbacks.training.call("after_training")
        on_rank_zero = self.trainer.rank == 0
        if self._stop is not None and on_rank_zero:
            self._stop.print()
        final = self.placement.full_state() if self.placement.is_sharded else None
        self.placement.unwrap(final)
        self.network = self.placement.module
        if on_rank_zero:
            self.results.send(self._result_state())


class RunRecords:
    """The history and callback states of a ``fit(shard=True)`` run, as a checkpoint part.

    ``fit(shard=True)`` adds it to the Trainer as the extra checkpoint part
    ``pyblaze_records`` (:py:meth:`helios.trainer.Trainer.add_checkpoint_part`). As every
    unsharded part, rank 0 writes its state and every rank of a resumed run loads it, after
    the model; the sharded model entry holds only weights and optimizer states, which every
    rank writes.

    Args:
        run: the run whose records these are.
    """

    name = "pyblaze_records"

    def __init__(self, run: EngineRun) -> None:
        self._run = run

    def state_dict(self) -> dict[str, Any]:
        """Return the run's :py:meth:`EngineRun.records_state`."""
        return self._run.records_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the run's records (after its weights: the model part loads first)."""
        self._run.load_records(state_dict)
        self._run.send_resumed()


__all__ = ["EngineRun", "RunRecords"]
