"""How :py:meth:`pyblaze.nn.BaseEngine.train` runs on the helios Trainer.

``train`` builds two helios objects and hands them to :py:class:`helios.trainer.Trainer`
(EPOCH unit, ``total_steps=epochs``, validation every epoch when there is validation data):

* :py:class:`LoaderDataModule`: the training and validation loaders turned into helios
  datasets with the same settings, so helios's resumable (and, with several GPUs, sharded)
  samplers drive them.
* :py:class:`EngineRun`: a :py:class:`helios.model.Model` whose hooks call the engine and
  the PyBlaze callbacks. The mapping, in helios's call order (plug-ins always run first)::

      setup                     model (and optimizer state) to the device; DDP when distributed
      on_training_start         before_training(model, epochs)
      on_training_epoch_start   before_epoch(epoch, num_batches)
      train_step                engine.train_batch(batch, **train_kwargs)
      on_training_batch_end     after_batch(loss)        (loss averaged over ranks)
      on_validation_start       before_predictions(model, num_val_batches)
      valid_step                engine.eval_batch(batch); outputs kept on the CPU; after_batch(None)
      on_validation_end         whole-set metrics -> val_*; after_predictions()
      on_training_epoch_end     [eval_train: train_*]; history entry; after_epoch(Evaluation)
      should_training_stop      True once a callback raised CallbackException
      on_training_end           after_training(); verbose CallbackException printed

The model's ``state_dict`` (weights, optimizer states, history so far) is what helios
checkpoints hold, so a run with ``trainer_options={"chkpt_root": ..., "chkpt_frequency":
n}`` resumes from its newest checkpoint with its history.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, RandomSampler, SequentialSampler, Subset
from torch.utils.data import Dataset as TorchDataset

from helios.data import DataLoaderParams, DataModule
from helios.model import Model
from pyblaze.nn.callbacks.base import CallbackException, PredictionCallback, TrainingCallback
from pyblaze.nn.engines import BaseEngine, compute_metrics, module_device, to_device
from pyblaze.nn.history import Evaluation

if TYPE_CHECKING:
    from helios.plugins import Plugin
    from helios.trainer import TrainingState


def loader_params(
    loader: DataLoader, name: str, seed: int, is_distributed: bool | None
) -> tuple[TorchDataset, DataLoaderParams]:
    """Read the dataset and the helios loader settings of a PyTorch data loader.

    Args:
        loader: the loader.
        name: the argument name, for error messages.
        seed: the seed of the shuffling.
        is_distributed: ``None`` to shard the data among ranks in a distributed run,
            ``False`` to give every rank the whole data set.

    Returns:
        The dataset and the loader settings.

    Raises:
        ValueError: if the loader cannot be rebuilt by helios (iterable dataset, custom
            sampler or batch sampler, sampling with replacement, ``worker_init_fn``).
    """
    if isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            f"{name} iterates an IterableDataset; training needs a map-style dataset "
            "(with __len__ and __getitem__)"
        )
    if loader.batch_size is None:
        raise ValueError(
            f"{name} uses a custom batch_sampler; pass batch_size (and shuffle) to the "
            "DataLoader instead"
        )
    sampler = loader.sampler
    if type(sampler) is RandomSampler:
        if sampler.replacement or sampler._num_samples is not None:
            raise ValueError(
                f"{name} samples with replacement or a custom num_samples; only plain "
                "shuffling (shuffle=True) can be carried over to helios's samplers"
            )
        shuffle = True
    elif type(sampler) is SequentialSampler:
        shuffle = False
    else:
        raise ValueError(
            f"{name} uses a {type(sampler).__name__}; only the default samplers "
            "(shuffle=True or False) can be carried over to helios's resumable samplers"
        )
    if loader.worker_init_fn is not None:
        raise ValueError(
            f"{name} has a worker_init_fn, which helios's loaders replace with their own "
            "worker seeding; remove it (each worker's RNGs are seeded for you)"
        )
    params = DataLoaderParams(
        random_seed=seed,
        batch_size=loader.batch_size,
        shuffle=shuffle,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        is_distributed=is_distributed,
        collate_fn=loader.collate_fn,
    )
    return loader.dataset, params


class LoaderDataModule(DataModule):
    """A helios data module made from PyTorch data loaders.

    The training data is sharded among ranks in a distributed run; the validation data is
    not, so every rank computes the metrics on the whole validation set.

    Args:
        train_loader: the training loader.
        val_loader: the validation loader, if any.
        seed: the seed of the shuffling.
        val_iterations: use only this many validation batches.
    """

    def __init__(
        self,
        train_loader: DataLoader,
        val_loader: DataLoader | None,
        seed: int,
        val_iterations: int | None = None,
    ) -> None:
        super().__init__()
        self._train_spec = self._create_dataset(
            *loader_params(train_loader, "train_data", seed, is_distributed=None)
        )
        self._valid_spec = None
        if val_loader is not None:
            dataset, params = loader_params(val_loader, "val_data", seed, is_distributed=False)
            if val_iterations is not None:
                size = min(len(dataset), val_iterations * params.batch_size)  # type: ignore[arg-type]
                dataset = Subset(dataset, range(size))
            self._valid_spec = self._create_dataset(dataset, params)

    def setup(self) -> None:
        """Install the training and validation datasets."""
        self._train_dataset = self._train_spec
        self._valid_dataset = self._valid_spec


def _batch_size(batch: Any) -> int:
    """Return the number of samples of a batch: the first dimension of its first tensor."""
    if isinstance(batch, torch.Tensor):
        return int(batch.size(0)) if batch.dim() > 0 else 1
    if isinstance(batch, Mapping):
        batch = list(batch.values())
    if isinstance(batch, list | tuple):
        for item in batch:
            if isinstance(item, torch.Tensor | list | tuple | Mapping):
                return _batch_size(item)
    return 1


def _move_optimizer_state(optimizers: Sequence[torch.optim.Optimizer]) -> None:
    """Move optimizer state (e.g. Adam's moments) to the device of its parameters."""
    for optimizer in optimizers:
        if optimizer.state:
            optimizer.load_state_dict(optimizer.state_dict())


class EngineRun(Model):
    """The helios model that runs an engine and its callbacks (see the module docstring).

    Args:
        engine: the engine.
        epochs: the number of epochs requested.
        callbacks: the user's callbacks.
        val_metrics: the metrics computed on the validation data (``loss`` included).
        train_metrics: the metrics computed on the training data (``None``: none).
        train_kwargs: the arguments of ``train_batch``.
        eval_kwargs: the arguments of ``eval_batch``.
        train_data: the training loader (for ``train_metrics``).
    """

    def __init__(
        self,
        engine: BaseEngine,
        epochs: int,
        callbacks: Sequence[TrainingCallback | PredictionCallback],
        val_metrics: Mapping[str, Any],
        train_metrics: Mapping[str, Any] | None,
        train_kwargs: Mapping[str, Any],
        eval_kwargs: Mapping[str, Any],
        train_data: DataLoader,
    ) -> None:
        super().__init__(f"pyblaze_{type(engine.model).__name__}")
        self._engine = engine
        self._module = engine.model
        self._num_epochs = epochs
        self._callbacks = list(callbacks)
        self._val_metrics = dict(val_metrics)
        self._train_metrics = None if train_metrics is None else dict(train_metrics)
        self._train_kwargs = dict(train_kwargs)
        self._eval_kwargs = dict(eval_kwargs)
        self._train_data = train_data
        self._optimizers = [
            self._train_kwargs[k]
            for k in sorted(self._train_kwargs)
            if isinstance(self._train_kwargs[k], torch.optim.Optimizer)
        ]
        self._result_path: str | None = None
        self._epochs: list[dict[str, Any]] = []
        self._reset_run_state()

    def _reset_run_state(self) -> None:
        self._training_callbacks: list[TrainingCallback] = []
        self._prediction_callbacks: list[PredictionCallback] = []
        self._stop: CallbackException | None = None
        self._skip_epoch = False
        self._num_batches = 0
        self._num_val_batches = 0
        self._batch_losses: list[Any] = []
        self._batch_sizes: list[int] = []
        self._last_loss: Any = None
        self._predictions: list[Any] = []
        self._targets: list[Any] = []
        self._epoch_metrics: dict[str, Any] = {}

    # -- driving the Trainer ----------------------------------------------------------------

    def execute(
        self,
        trainer_kwargs: Mapping[str, Any],
        plugins: Sequence[Plugin],
        datamodule: LoaderDataModule,
    ) -> list[dict[str, Any]]:
        """Run the training on a helios Trainer.

        Args:
            trainer_kwargs: the arguments of the Trainer.
            plugins: helios plug-ins to register.
            datamodule: the data.

        Returns:
            The history entries, one per epoch.

        Raises:
            RuntimeError: if the Trainer reports a failure without raising.
        """
        from helios.trainer import Trainer
        from helios.trainer.launch import use_spawn

        trainer = Trainer(**trainer_kwargs)
        # pyblaze users expect the errors of their batches and callbacks to propagate.
        trainer.train_exceptions.append(Exception)
        for plugin in plugins:
            plugin.configure_trainer(trainer)
            plugin.configure_model(self)
            if plugin.plug_id not in trainer.plugins:
                plugin._register_in_trainer(trainer)

        engine, module = self._engine, self._module
        original_device = module_device(module)
        with contextlib.ExitStack() as stack:
            if use_spawn(trainer):
                folder = stack.enter_context(tempfile.TemporaryDirectory())
                self._result_path = os.path.join(folder, "result.pt")
            try:
                succeeded = trainer.fit(self, datamodule)
            finally:
                engine.model = module
                engine.device = None
                module.to(original_device)
                _move_optimizer_state(self._optimizers)
                self._reset_run_state()
            if not succeeded:
                raise RuntimeError("training failed; the traceback was logged above")
            if self._result_path is not None:
                self._load_result(self._result_path)
                self._result_path = None
        return self._epochs

    def _save_result(self, path: str) -> None:
        result = {
            "module": {k: v.detach().cpu() for k, v in self._module.state_dict().items()},
            "optimizers": [to_device(o.state_dict(), "cpu") for o in self._optimizers],
            "epochs": self._epochs,
        }
        torch.save(result, path)

    def _load_result(self, path: str) -> None:
        result = torch.load(path, map_location="cpu", weights_only=True)
        self._load(result)

    def _load(self, state: Mapping[str, Any]) -> None:
        self._module.load_state_dict(state["module"])
        for optimizer, optimizer_state in zip(self._optimizers, state["optimizers"]):
            optimizer.load_state_dict(optimizer_state)
        self._epochs = [dict(entry) for entry in state["epochs"]]

    # -- helios hooks ------------------------------------------------------------------------

    def setup(self, fast_init: bool = False) -> None:
        """Move the model and its optimizer state to the device; wrap it for DDP."""
        self._epochs = []
        self._module.to(self.device)
        _move_optimizer_state(self._optimizers)
        self._engine.device = self.device
        if self.is_distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self._engine.model = nn.parallel.DistributedDataParallel(
                self._module, device_ids=device_ids
            )

    def state_dict(self) -> dict[str, Any]:
        """Return the weights, the optimizer states and the history entries so far."""
        return {
            "module": self._module.state_dict(),
            "optimizers": [o.state_dict() for o in self._optimizers],
            "epochs": self._epochs,
        }

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        """Restore what :py:meth:`state_dict` returned (when resuming from a checkpoint)."""
        self._load(state_dict)

    def train(self) -> None:
        """Put the model in training mode."""
        self._engine.model.train()

    def eval(self) -> None:
        """Put the model in evaluation mode."""
        self._engine.model.eval()

    def on_training_start(self) -> None:
        """Select the callbacks of this process and fire ``before_training``."""
        self._reset_run_state()
        on_rank_zero = self.trainer.rank == 0
        users = [c for c in self._callbacks if on_rank_zero or not c.rank_zero_only]
        self._training_callbacks = [self._engine] + [
            c for c in users if isinstance(c, TrainingCallback)
        ]
        self._prediction_callbacks = [self._engine] + [
            c for c in users if isinstance(c, PredictionCallback)
        ]
        datamodule = self.trainer.datamodule
        train = datamodule.train_dataloader()
        self._num_batches = len(train[0]) if train is not None else 0
        valid = datamodule.valid_dataloader()
        self._num_val_batches = len(valid[0]) if valid is not None else 0
        for callback in self._training_callbacks:
            callback.before_training(self._module, self._num_epochs)

    def on_training_epoch_start(self, current_epoch: int) -> None:
        """Fire ``before_epoch`` (a CallbackException skips the epoch and stops training)."""
        self._batch_losses, self._batch_sizes = [], []
        self._epoch_metrics = {}
        self._skip_epoch = self._fire_stoppable(
            "before_epoch", current_epoch - 1, self._num_batches
        )

    def train_step(self, batch: Any, state: TrainingState) -> None:
        """Train on the batch with the engine."""
        if self._skip_epoch:
            return
        batch = to_device(batch, self.device)
        loss = self._engine.train_batch(batch, **self._train_kwargs)
        self._last_loss = loss
        self._batch_sizes.append(_batch_size(batch))
        if isinstance(loss, float | int) and not isinstance(loss, bool):
            self._loss_items["loss"] = torch.tensor(float(loss), device=self.device)

    def on_training_batch_end(self, state: TrainingState, should_log: bool = False) -> None:
        """Average the loss over ranks, record it and fire ``after_batch``."""
        if self._skip_epoch:
            return
        super().on_training_batch_end(state, should_log)
        loss = self._last_loss
        if self.is_distributed and "loss" in self._loss_items:
            loss = float(self._loss_items["loss"].item())
        self._batch_losses.append(loss)
        for callback in self._training_callbacks:
            callback.after_batch(loss)

    def should_training_stop(self) -> bool:
        """Stop once a callback raised :py:class:`CallbackException`."""
        return self._stop is not None

    def on_validation_start(self, validation_cycle: int) -> None:
        """Fire ``before_predictions`` for the validation of this epoch."""
        super().on_validation_start(validation_cycle)
        self._predictions, self._targets = [], []
        if self._skip_epoch:
            return
        for callback in self._prediction_callbacks:
            callback.before_predictions(self._module, self._num_val_batches)

    def valid_step(self, batch: Any, step: int) -> None:
        """Compute the model's outputs for a validation batch; keep them on the CPU."""
        if self._skip_epoch:
            return
        prediction, target = self._engine.eval_batch(
            to_device(batch, self.device), **self._eval_kwargs
        )
        self._predictions.append(to_device(prediction, "cpu"))
        self._targets.append(to_device(target, "cpu"))
        for callback in self._prediction_callbacks:
            callback.after_batch(None)

    def on_validation_end(self, validation_cycle: int) -> None:
        """Compute the validation metrics on the whole set and fire ``after_predictions``."""
        super().on_validation_end(validation_cycle)
        if self._skip_epoch:
            return
        engine = self._engine
        predictions = engine.collate_predictions(self._predictions)
        targets = engine.collate_targets(self._targets)
        self._predictions, self._targets = [], []
        values = compute_metrics(self._val_metrics, predictions, targets)
        self._epoch_metrics.update({f"val_{k}": v for k, v in values.items()})
        for callback in self._prediction_callbacks:
            callback.after_predictions()

    def on_training_epoch_end(self, current_epoch: int) -> None:
        """Record the epoch in the history and fire ``after_epoch``."""
        if self._skip_epoch:
            return
        if self._train_metrics is not None:
            users = [c for c in self._prediction_callbacks if c is not self._engine]
            train_eval = self._engine.evaluate(
                self._train_data,
                metrics=self._train_metrics,
                callbacks=users,
                gpu=None,
                **self._eval_kwargs,
            )
            self._epoch_metrics.update(train_eval.with_prefix("train_").to_dict())
        losses = Evaluation(
            self._engine.collate_losses(self._batch_losses), weights=self._batch_sizes
        )
        metrics = Evaluation.merge(losses, Evaluation(self._epoch_metrics))
        self._epochs.append({"micro_train_loss": list(self._batch_losses), **metrics.to_dict()})
        self._fire_stoppable("after_epoch", metrics)

    def on_training_end(self) -> None:
        """Fire ``after_training``; print a verbose stop message; send back the results."""
        for callback in self._training_callbacks:
            callback.after_training()
        on_rank_zero = self.trainer.rank == 0
        if self._stop is not None and on_rank_zero:
            self._stop.print()
        self._engine.model = self._module
        if self._result_path is not None and on_rank_zero:
            self._save_result(self._result_path)

    def _fire_stoppable(self, hook: str, *args: Any) -> bool:
        """Call a hook on every training callback; return whether one asked to stop."""
        stopped = False
        for callback in self._training_callbacks:
            try:
                getattr(callback, hook)(*args)
            except CallbackException as stop:
                stopped = True
                if self._stop is None:
                    self._stop = stop
        return stopped


__all__ = ["EngineRun", "LoaderDataModule", "loader_params"]
