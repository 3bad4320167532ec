"""Engines: the code that trains, evaluates and runs a model.

:py:class:`BaseEngine` owns the generic parts (devices, callbacks, metrics, results);
subclasses say what one batch means by implementing :py:meth:`BaseEngine.train_batch` and
:py:meth:`BaseEngine.eval_batch`. :py:class:`SupervisedEngine` does this for ``(x, y)``
batches.

``train`` is not a loop of its own: it builds a helios run (a
:py:class:`helios.model.Model` that calls the engine for every batch and a
:py:class:`helios.data.DataModule` made from the data loaders) and lets
:py:class:`helios.trainer.Trainer` drive it. Devices, the epoch loop, distributed training
(one process per GPU), checkpoints and helios plug-ins therefore behave exactly as in a
helios run. ``evaluate`` and ``predict`` need no training loop: they run batch by batch on
the resolved device, without gradients.

GPU selection (the ``gpu`` argument of ``train``, ``evaluate`` and ``predict``):

=============  ===================================================================
``'auto'``     every GPU (the CPU when there is none); one GPU when the engine does
               not :py:meth:`~BaseEngine.supports_multiple_gpus`
``True``       the GPU with the most free memory (``torch.cuda.mem_get_info``)
``False``      the CPU
``i``          GPU ``i``
``[i, j]``     these GPUs
=============  ===================================================================

Training on more than one GPU starts one process per GPU (helios's distributed launch, with
``DistributedDataParallel``); ``evaluate`` and ``predict`` use the first GPU of the list.
A script started by ``torchrun`` trains distributed in the processes ``torchrun`` started,
on the GPUs, or with ``gpu=False`` on the CPU (gloo). ``train(..., shard=True)`` shards the
model over the processes with FSDP2 instead of replicating it (see :py:meth:`BaseEngine.train`).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from helios.core.precision import Precision
from pyblaze.multiprocessing.prediction import predict_batches
from pyblaze.nn._callback_list import CallbackList
from pyblaze.nn._checks import (
    check_batches,
    check_callbacks,
    check_count,
    check_loss_shapes,
    check_metrics,
    num_batches,
)
from pyblaze.nn._fit import plan_fit, run_fit
from pyblaze.nn._gpus import GpuArg, device_of, resolve_gpu
from pyblaze.nn._metrics import Metric, compute_metrics, score_outputs
from pyblaze.nn._tensors import concat, module_device, to_device
from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback
from pyblaze.nn.history import Evaluation, History

if TYPE_CHECKING:
    from helios.loggers import ExperimentLogger
    from helios.plugins import Plugin

_FULL_PRECISION = Precision()
_SEQUENCE = (list, tuple)  # a tuple: ``list | tuple`` would build a union on every batch


class BaseEngine(TrainingCallback, PredictionCallback, abc.ABC):
    """Base class of engines: trains, evaluates and runs a model batch by batch.

    A subclass implements :py:meth:`train_batch` and :py:meth:`eval_batch` (and may
    override :py:meth:`predict_batch` and the ``collate_*`` methods). The engine is also a
    callback: it receives every hook before the user's callbacks, which is where it can keep
    per-epoch state.

    Example:
        .. code-block:: python

            class AutoencoderEngine(xnn.BaseEngine):
                def train_batch(self, data, optimizer, loss):
                    optimizer.zero_grad()
                    value = loss(self.model(data), data)
                    value.backward()
                    optimizer.step()
                    return value.item()

                def eval_batch(self, data):
                    return self.model(data), data

    Args:
        model: the model to train.

    Attributes:
        model: the model. While a distributed run trains, this is the model wrapped in
            ``DistributedDataParallel``, or, with ``train(shard=True)``, its sharded copy.
        device: the device of the current train/evaluate/predict call (``None`` outside
            of one).
        precision: the :py:class:`helios.core.precision.Precision` of the current
            ``train`` call (full precision outside of one). A ``train_batch`` that runs its
            forward pass and loss under ``precision.autocast()``, back-propagates with
            ``precision.backward(loss)``, clips with ``precision.clip_gradients(...)`` and
            steps with ``precision.step(optimizer)`` trains at every ``precision`` of
            ``fit`` (as :py:class:`SupervisedEngine` does).
        clip_norm: the ``clip_norm`` of the current ``train`` call (``None``: no clipping).
        clip_value: the ``clip_value`` of the current ``train`` call (``None``: none).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"an engine needs a torch.nn.Module, but received {type(model).__name__}"
            )
        #: The module the engine trains and runs.
        self.model = model
        #: The device of the current ``train``/``evaluate``/``predict`` call (None outside).
        self.device: torch.device | None = None
        #: The precision of the current ``train`` call (full precision outside of one).
        self.precision = _FULL_PRECISION
        #: Gradient clipping limits of the current ``train`` call.
        self.clip_norm: float | None = None
        self.clip_value: float | None = None
        self._in_train = False

    def start_run(
        self, precision: Precision, clip_norm: float | None, clip_value: float | None
    ) -> None:
        """Take the precision and clipping of a ``train`` call (in each of its processes).

        ``train`` calls it before the first batch of every process of the run. Override it
        to prepare what a run needs once (call ``super()``), as :py:class:`SupervisedEngine`
        chooses its training step.

        Args:
            precision: the run's precision.
            clip_norm: the ``clip_norm`` of the call (``None``: no clipping by norm).
            clip_value: the ``clip_value`` of the call (``None``: no clipping by value).
        """
        self.precision = precision
        self.clip_norm, self.clip_value = clip_norm, clip_value

    def end_run(self) -> None:
        """Forget the precision and clipping of the ``train`` call that ended."""
        self.precision = _FULL_PRECISION
        self.clip_norm = self.clip_value = None

    def supports_multiple_gpus(self) -> bool:
        """Tell whether ``train`` may use several GPUs at once.

        Returns:
            True by default. When false, ``gpu='auto'`` picks a single GPU.
        """
        return True

    # -- training -------------------------------------------------------------------------

    def train(
        self,
        train_data: DataLoader,
        val_data: DataLoader | None = None,
        epochs: int = 20,
        val_iterations: int | None = None,
        eval_every: int | None = None,
        eval_train: bool = False,
        eval_val: bool = True,
        callbacks: Sequence[TrainingCallback | PredictionCallback] | None = None,
        metrics: Mapping[str, Metric] | None = None,
        gpu: GpuArg = "auto",
        *,
        plugins: Sequence[Plugin] | None = None,
        trainer_options: Mapping[str, Any] | None = None,
        precision: str = "32",
        clip_norm: float | None = None,
        clip_value: float | None = None,
        compile: bool = False,
        loggers: Sequence[ExperimentLogger] | None = None,
        shard: bool = False,
        **kwargs: Any,
    ) -> History:
        """Train the model on a helios Trainer and return its history.

        Every epoch iterates ``train_data`` once, calling :py:meth:`train_batch` for each
        batch, then (with ``val_data``) evaluates the model on the whole validation set.
        ``train_data`` and ``val_data`` must be map-style
        :py:class:`~torch.utils.data.DataLoader` objects with the default samplers (the
        loader's dataset, batch size, shuffling, workers, ``pin_memory``, ``drop_last`` and
        ``collate_fn`` are carried over to helios's resumable loaders).

        Keyword arguments whose names start with ``eval_`` are passed, without the prefix,
        to :py:meth:`eval_batch` during validation; all others go to :py:meth:`train_batch`
        (``optimizer`` and ``loss`` for :py:class:`SupervisedEngine`). If a ``loss`` is
        given and ``eval_val`` is true, it is also computed on the validation set
        (``val_loss``).

        helios plug-ins (``plugins``) are registered in the Trainer and run alongside the
        callbacks: plug-in hooks run before the engine's in every helios hook, so a plug-in
        that processes batches (e.g. :py:class:`helios.plugins.CUDAPlugin`) does so before
        :py:meth:`train_batch` sees them, and a plug-in's ``should_training_stop`` can end
        training like an early-stopping callback. ``trainer_options`` are further arguments
        of :py:class:`helios.trainer.Trainer`, e.g. ``{"chkpt_root": path,
        "chkpt_frequency": 1}`` to save (and resume from) checkpoints, or
        ``{"enable_progress_bar": True}``.

        When training on several GPUs, the model, optimizer, loss, metrics and callbacks are
        sent to one process per GPU, so they must be picklable (no lambdas) and the script
        needs an ``if __name__ == "__main__":`` guard. The trained weights, the optimizer
        state and the history come back to this process; other changes made by callbacks in
        those processes (scheduler counters, ...) do not. Callbacks with
        ``rank_zero_only`` (loggers, savers, trackers) run only in the first process. Every
        process validates on the whole validation set, so metrics are exact.

        Any exception raised by a batch or a callback propagates out of ``train``; the
        model is put back on its original device first. Before the first epoch, the first
        batch of ``val_data`` goes through :py:meth:`eval_batch` and every metric is
        computed on it once (a copy of a metric object; a function itself), in eval mode,
        without gradients and with every random generator put back, so a validation
        loader of the wrong structure, a metric returning a vector or ``None``, or a
        ``loss`` whose inputs broadcast wrongly fail in seconds, not after an epoch.

        Like every helios run, training seeds Python's, NumPy's and torch's global random
        generators; the seed is drawn from torch's generator, so ``torch.manual_seed``
        before ``fit`` makes the run reproducible. Checkpoints (``trainer_options``) hold
        the weights, the optimizer states, the history and the state of the engine and of
        every callback with ``state_dict``/``load_state_dict`` (EarlyStopping, the
        schedulers, ModelSaverCallback, TensorboardTracker; matched by position and class,
        so pass the same callbacks in the same order): a resumed ``fit`` stops at the same
        epoch with the same history as an uninterrupted one, and a finished one trains
        nothing when run again.

        With ``shard=True``, a distributed run (several GPUs, or several processes under
        ``torchrun``) shards the model with FSDP2 instead of replicating it with DDP: every
        process holds only its shard of the weights, gradients and optimizer state
        (:py:func:`helios.model.sharding.shard_network`: each entry of the model's
        ``ModuleList``/``Sequential`` containers and the model itself as units, with the
        run's ``precision``). FSDP2 replaces a module's parameters for good, so each process
        shards a *copy* of the model, made when the run starts, with rank 0's weights and
        buffers (as DDP does); the optimizers (made before ``train`` on the model's
        parameters) are pointed at the copy's parameters, matched by name, with any state
        they have sharded too. While the run lasts, :py:attr:`model` and the model the
        callbacks receive are that copy (its parameters are ``DTensor`` shards). At the end,
        the full weights and optimizer states are gathered from the shards and loaded into
        the model and the optimizers, which train the model's own parameters again: both
        come back as they went in (the same objects, plain tensors), trained, and a further
        ``train`` with or without ``shard`` continues from them. Buffers, which FSDP2 does
        not shard, come back as rank 0 has them. A run that fails leaves the model and the
        optimizers as they were before it. Checkpoints of a sharded run are folders
        (``.dcp``) in which every process writes its shards through Distributed
        Checkpoint; they resume, also on another number of processes, in fits with
        ``shard=True`` (whose checkpoints keep the history and callback states apart from
        the weights; a fit without ``shard`` refuses them). With one process there is
        nothing to shard: ``shard=True`` trains as ``shard=False`` does.

        Args:
            train_data: the training data.
            val_data: the validation data, evaluated after every epoch.
            epochs: the number of epochs.
            val_iterations: use only this many batches of ``val_data``.
            eval_every: not supported (PyBlaze 1.1.6 cuts endless iterable data into epochs
                of ``eval_every`` batches); must be ``None``. A stream
                (``IterableDataset``) trains one pass per epoch, resumes exactly, and must
                end.
            eval_train: also compute ``metrics`` on the whole training set after every
                epoch (``train_<metric>``).
            eval_val: compute the ``loss`` on the validation data (``val_loss``).
            callbacks: training and prediction callbacks (prediction callbacks follow the
                validation of every epoch).
            metrics: ``{name: metric(y_pred, y_true)}`` computed on the validation data
                (``val_<name>``).
            gpu: the device(s) to train on (see the module docstring).
            plugins: helios plug-ins to register in the Trainer.
            trainer_options: further arguments of :py:class:`helios.trainer.Trainer`
                (except those ``train`` sets itself or takes as its own arguments).
            precision: ``"32"``, ``"bf16-mixed"`` or ``"fp16-mixed"`` (helios's
                ``Trainer(precision=...)``, see :py:mod:`helios.core.precision`); the
                engine's ``train_batch`` uses it through :py:attr:`precision`.
            clip_norm: clip the gradients to this total norm before every optimizer step.
            clip_value: clip every gradient element to ``[-clip_value, clip_value]``
                before every optimizer step.
            compile: compile the model with ``torch.compile`` for this run
                (``Trainer(enable_compile=True)``; the model is compiled in place, keeps
                its ``state_dict`` keys and is uncompiled again when ``train`` returns).
            loggers: helios experiment loggers (:py:mod:`helios.loggers`:
                ``CSVLogger``, ``MLflowLogger``, ``WandbLogger``). Every epoch's metrics
                (``train_loss``, ``val_*``, ``train_*``, as in the history) go to them as
                ``valid/<name>``, with the learning rates and the epoch times; their state is
                part of the checkpoints.
            shard: in a distributed run, shard the model over the processes (FSDP2)
                instead of replicating it (DDP); see above.
            **kwargs: arguments of :py:meth:`train_batch` and (``eval_`` prefix)
                :py:meth:`eval_batch`.

        Returns:
            The history: ``micro_train_loss``, ``train_loss`` and the ``val_*`` and
            ``train_*`` metrics per epoch.

        Raises:
            TypeError: for an argument of the wrong type (``shard`` not a bool, ...).
            ValueError: for an invalid value (``epochs`` < 1, an unknown GPU, a loader with
                a custom sampler, a reserved ``trainer_options`` key, ...).
        """
        plan = plan_fit(
            self,
            train_data,
            val_data,
            epochs,
            val_iterations,
            eval_every,
            eval_train,
            eval_val,
            callbacks,
            metrics,
            gpu,
            plugins,
            trainer_options,
            kwargs,
            precision,
            clip_norm,
            clip_value,
            compile,
            loggers,
            shard,
        )
        start = time.perf_counter()
        self._in_train = True
        try:
            entries = run_fit(self, plan)
        finally:
            self._in_train = False
        return History(time.perf_counter() - start, entries)

    # -- evaluation and prediction -----------------------------------------------------------

    def evaluate(
        self,
        data: Iterable[Any],
        iterations: int | None = None,
        metrics: Mapping[str, Metric] | None = None,
        callbacks: Sequence[PredictionCallback] | None = None,
        gpu: GpuArg = "auto",
        **kwargs: Any,
    ) -> Evaluation:
        """Compute metrics of the model on a data set.

        Each batch goes through :py:meth:`eval_batch` without gradients, in eval mode; the
        outputs and targets of all batches are concatenated and every metric is computed
        once on the whole set. The model returns to its previous device and mode afterwards.

        Args:
            data: the batches (usually a data loader).
            iterations: use only this many batches (data without a length, a stream, is
                used to its end without it).
            metrics: ``{name: metric(y_pred, y_true)}``.
            callbacks: prediction callbacks (training callbacks in the list are ignored).
            gpu: the device (the first GPU of a list is used). ``None`` keeps the model
                where it is.
            **kwargs: arguments of :py:meth:`eval_batch`.

        Returns:
            The metric values.

        Raises:
            TypeError: for an argument of the wrong type (``data`` a single tensor or
                array: both ``evaluate`` and ``predict`` take an iterable of batches).
            ValueError: for an invalid ``gpu`` or ``iterations``, or a metric that does not
                return a single number.
        """
        check_batches(data)
        metric_fns = check_metrics(metrics)
        listed = CallbackList.select(PredictionCallback, self, check_callbacks(callbacks))
        outputs = self._run_batches(
            data, iterations, listed, gpu, lambda batch: self.eval_batch(batch, **kwargs)
        )
        return Evaluation(score_outputs(self, outputs, metric_fns))

    def predict(
        self,
        data: Iterable[Any],
        iterations: int | None = None,
        callbacks: Sequence[PredictionCallback] | None = None,
        gpu: GpuArg = "auto",
        parallel: bool = True,
        **kwargs: Any,
    ) -> Any:
        """Run the model on every batch and return the concatenated outputs (on the CPU).

        Args:
            data: the batches (usually a data loader).
            iterations: use only this many batches (data without a length, a stream, is
                used to its end without it).
            callbacks: prediction callbacks (training callbacks in the list are ignored).
            gpu: the device (the first GPU of a list is used).
            parallel: on the CPU (``gpu=False``, or ``"auto"`` without CUDA) or several
                GPUs, predict in worker processes, as PyBlaze 1.1.6 did (see
                :py:mod:`pyblaze.multiprocessing.prediction`); ``False`` predicts in this
                process.
            **kwargs: arguments of :py:meth:`predict_batch`.

        Returns:
            The output of :py:meth:`collate_predictions` (by default the outputs
            concatenated along the first dimension).

        Raises:
            TypeError: for an argument of the wrong type (``data`` a single tensor or
                array: both ``evaluate`` and ``predict`` take an iterable of batches).
            ValueError: for an invalid ``gpu`` or ``iterations``.
        """
        check_batches(data)
        if gpu is None:
            raise TypeError("predict needs a device: gpu must not be None")
        listed = CallbackList.select(PredictionCallback, self, check_callbacks(callbacks))
        outputs = predict_batches(
            self, data, iterations, listed, gpu, parallel, kwargs,
            sequential=lambda: self._run_batches(
                data, iterations, listed, gpu, lambda batch: self.predict_batch(batch, **kwargs)
            ),
        )  # fmt: skip
        return self.collate_predictions(outputs)

    def _run_batches(
        self,
        data: Iterable[Any],
        iterations: int | None,
        listed: CallbackList,
        gpu: GpuArg,
        step: Callable[[Any], Any],
    ) -> list[Any]:
        """Run ``step`` on every batch in eval mode without gradients; outputs go to CPU."""
        iterations = check_count("iterations", iterations, optional=True)
        count = num_batches(data, iterations, "data")
        original_device = module_device(self.model)
        device = original_device if gpu is None else device_of(resolve_gpu(gpu))
        was_training = self.model.training

        listed.call("before_predictions", self.model, count)
        previous_device, self.device = self.device, device
        self.model.to(device)
        self.model.eval()
        outputs: list[Any] = []
        try:
            with torch.no_grad():
                for index, batch in enumerate(data):
                    if count is not None and index >= count:
                        break
                    outputs.append(to_device(step(to_device(batch, device)), "cpu"))
                    listed.batch_hook(None)
        finally:
            self.model.to(original_device)
            self.model.train(was_training)
            self.device = previous_device
        listed.call("after_predictions")
        return outputs

    # -- batch-level methods ----------------------------------------------------------------

    @abc.abstractmethod
    def train_batch(self, data: Any, **kwargs: Any) -> Any:
        """Train on one batch (already on :py:attr:`device`).

        Args:
            data: the batch.
            **kwargs: the training arguments given to ``train``.

        Returns:
            The loss of the batch, usually a float.
        """

    @abc.abstractmethod
    def eval_batch(self, data: Any, **kwargs: Any) -> tuple[Any, Any]:
        """Compute the model's output and the target of one batch (no gradients).

        Args:
            data: the batch.
            **kwargs: the ``eval_`` arguments given to ``train`` (prefix removed) or the
                arguments given to ``evaluate``.

        Returns:
            ``(prediction, target)``.
        """

    def predict_batch(self, data: Any, **kwargs: Any) -> Any:
        """Compute the model's output for one batch of inputs.

        Args:
            data: the batch.
            **kwargs: the arguments given to ``predict``.

        Returns:
            The output, by default ``forward(data)``.
        """
        return self.forward(data, **kwargs)

    def forward(self, data: Any, **kwargs: Any) -> Any:
        """Call the model on a batch of inputs.

        A list or tuple is passed as positional arguments, a dict as keyword arguments,
        anything else as the single argument.

        Args:
            data: the inputs.
            **kwargs: further keyword arguments of the model.

        Returns:
            The model's output.
        """
        if isinstance(data, torch.Tensor):
            return self.model(data, **kwargs)
        if isinstance(data, _SEQUENCE):
            return self.model(*data, **kwargs)
        if isinstance(data, Mapping):
            return self.model(**data, **kwargs)
        return self.model(data, **kwargs)

    def collate_predictions(self, predictions: list[Any]) -> Any:
        """Join the per-batch predictions.

        Args:
            predictions: one output per batch.

        Returns:
            Tensors concatenated along the first dimension (tuples and dicts element-wise).
        """
        return concat(predictions)

    def collate_targets(self, targets: list[Any]) -> Any:
        """Join the per-batch targets, as :py:meth:`collate_predictions` joins predictions.

        Args:
            targets: one target per batch.

        Returns:
            The joined targets.
        """
        return concat(targets)

    def collate_losses(self, losses: list[Any]) -> dict[str, list[Any]]:
        """Name the per-batch losses of an epoch.

        The lists are averaged (weighted by batch size) into the epoch values.

        Args:
            losses: the values returned by :py:meth:`train_batch`.

        Returns:
            ``{"train_loss": losses}``.
        """
        return {"train_loss": losses}


class _ShapeCheckedLoss:
    """A loss whose call first refuses predictions and targets that broadcast wrongly."""

    def __init__(self, loss: Callable[[Any, Any], Any]) -> None:
        self._loss = loss

    def __call__(self, prediction: Any, target: Any) -> Any:
        check_loss_shapes(self._loss, prediction, target)
        return self._loss(prediction, target)


class SupervisedEngine(BaseEngine):
    """Engine for supervised learning on ``(x, y)`` batches.

    ``train`` needs the keyword arguments ``optimizer`` (a ``torch.optim.Optimizer``) and
    ``loss`` (a callable ``loss(y_pred, y_true)``, e.g. ``nn.CrossEntropyLoss()``), and
    accepts ``gradient_accumulation_steps`` (default 1): gradients of that many batches
    are summed (each loss scaled by ``1 / steps``) before the optimizer steps, and the last
    batches of an epoch always step. The loss reported per batch is the unscaled loss.

    With ``fit(precision="bf16-mixed")`` or ``"fp16-mixed"`` the forward pass and the loss
    run under autocast and the backward pass goes through the run's grad scaler (fp16: a
    step whose gradients hold inf/NaN is skipped and the scale lowered); with
    ``clip_norm``/``clip_value`` the gradients are clipped (unscaled first) right before each
    optimizer step. At ``precision="32"`` without clipping the step is the plain PyTorch
    one; the choice is made once per ``fit``. On the first batch of a ``fit``, predictions
    and targets whose shapes would broadcast into a wrong loss (``(N, 1)`` against ``(N,)``)
    are refused with an error showing both shapes.

    ``evaluate`` batches are ``(x, y)``; ``predict`` batches are just ``x``.

    Args:
        model: the model to train.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._iteration: int | None = None
        self._num_iterations: int | None = 0
        # The loss of the last batch, kept until the next batch's forward pass as the
        # variables of a plain PyTorch loop keep it: while its autograd graph is alive,
        # autograd reuses the parameters' gradient accumulators instead of building new
        # ones for every batch.
        self._last_loss: torch.Tensor | None = None
        # The training step of the current run (chosen by ``start_run``).
        self._chosen_step: Callable[..., float] = self._plain_step
        self._step: Callable[..., float] = self._plain_step

    def before_epoch(self, current: int, num_iterations: int | None) -> None:
        """Reset the batch counter of the epoch."""
        self._iteration = 0
        self._num_iterations = num_iterations

    def after_batch(self, *args: Any) -> None:
        """Count the batch."""
        if self._iteration is not None:
            self._iteration += 1

    def after_epoch(self, metrics: Evaluation) -> None:
        """Forget the batch counter and the last loss."""
        self._iteration = None
        self._last_loss = None

    def state_dict(self) -> dict[str, Any]:
        """Return the batch counter of the epoch (part of the run's checkpoints).

        A run preempted inside an epoch resumes with the same gradient accumulation
        boundaries.

        Returns:
            The state.
        """
        return {"iteration": self._iteration, "num_iterations": self._num_iterations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :py:meth:`state_dict` returned.

        Args:
            state_dict: the state.
        """
        self._iteration = state_dict["iteration"]
        count = state_dict["num_iterations"]
        self._num_iterations = None if count is None else int(count)

    def __getstate__(self) -> dict[str, Any]:
        # A tensor with an autograd graph cannot be pickled (e.g. for spawned processes);
        # the step methods are chosen again by each process's run.
        state = {**self.__dict__, "_last_loss": None}
        state["_step"] = state["_chosen_step"] = None
        return state

    def train_batch(  # type: ignore[override]
        self,
        data: Any,
        optimizer: torch.optim.Optimizer,
        loss: Callable[[Any, Any], torch.Tensor],
        gradient_accumulation_steps: int = 1,
    ) -> float:
        """Run the forward and backward pass of one ``(x, y)`` batch and step the optimizer.

        Args:
            data: the batch ``(x, y)``.
            optimizer: the optimizer.
            loss: the loss ``loss(y_pred, y_true)``.
            gradient_accumulation_steps: the number of batches per optimizer step.

        Returns:
            The loss of the batch.

        Raises:
            RuntimeError: if called outside of ``train``.
            TypeError: if ``optimizer`` is not an optimizer.
            ValueError: if ``gradient_accumulation_steps`` < 1.
        """
        if self._iteration is None or not self._in_train:
            raise RuntimeError(
                "SupervisedEngine.train_batch runs only inside train()/fit(), which counts "
                "the batches of each epoch"
            )
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                "optimizer must be a torch.optim.Optimizer, but received "
                f"{type(optimizer).__name__}"
            )
        steps = gradient_accumulation_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(
                f"gradient_accumulation_steps must be an int >= 1, but received {steps!r}"
            )
        return self._step(data, optimizer, loss, steps)

    def start_run(
        self, precision: Precision, clip_norm: float | None, clip_value: float | None
    ) -> None:
        """Choose the training step of this ``train`` call, once (not per batch).

        Args:
            precision: the run's precision.
            clip_norm: the ``clip_norm`` of the call.
            clip_value: the ``clip_value`` of the call.
        """
        super().start_run(precision, clip_norm, clip_value)
        plain = precision.name == "32" and clip_norm is None and clip_value is None
        self._chosen_step = self._plain_step if plain else self._precise_step
        self._step = self._first_step

    def _first_step(self, data: Any, optimizer: Any, loss: Any, steps: int) -> float:
        """The first batch of a run: the chosen step, with the loss's shapes checked."""
        self._step = self._chosen_step
        return self._chosen_step(data, optimizer, _ShapeCheckedLoss(loss), steps)

    def _plain_step(self, data: Any, optimizer: Any, loss: Any, steps: int) -> float:
        """Train on a batch in float32, without clipping: the plain PyTorch step."""
        if self._iteration % steps == 0:  # type: ignore[operator]
            optimizer.zero_grad()
        prediction, target = self.eval_batch(data)
        value = loss(prediction, target)
        (value / steps if steps > 1 else value).backward()
        self._last_loss = value
        done = self._iteration + 1  # type: ignore[operator]
        if done % steps == 0 or done == self._num_iterations:
            optimizer.step()
        return float(value.item())

    def _precise_step(self, data: Any, optimizer: Any, loss: Any, steps: int) -> float:
        """Train on a batch with the run's precision helpers and gradient clipping.

        The forward pass and the loss run under autocast; the backward pass scales the loss
        when a grad scaler is in use; at the step boundary the gradients are clipped (after
        unscaling) and the optimizer steps (skipped on inf/NaN gradients with a scaler).
        """
        precision = self.precision
        if self._iteration % steps == 0:  # type: ignore[operator]
            optimizer.zero_grad()
        with precision.autocast():
            prediction, target = self.eval_batch(data)
            value = loss(prediction, target)
        precision.backward(value / steps if steps > 1 else value)
        self._last_loss = value
        done = self._iteration + 1  # type: ignore[operator]
        if done % steps == 0 or done == self._num_iterations:
            if self.clip_norm is not None or self.clip_value is not None:
                precision.clip_gradients(
                    optimizer, max_norm=self.clip_norm, max_value=self.clip_value
                )
            precision.step(optimizer)
        return float(value.item())

    def eval_batch(self, data: Any) -> tuple[Any, Any]:  # type: ignore[override]
        """Split an ``(x, y)`` batch and compute the model's output.

        Args:
            data: the batch ``(x, y)``.

        Returns:
            ``(model(x), y)``.

        Raises:
            ValueError: if the batch is not a pair.
        """
        if not isinstance(data, _SEQUENCE) or len(data) != 2:
            raise ValueError(
                "SupervisedEngine expects (x, y) batches, but received "
                f"{type(data).__name__}"
                + (f" of length {len(data)}" if isinstance(data, list | tuple) else "")
            )
        x, y = data
        return self.forward(x), y


__all__ = [
    "BaseEngine",
    "SupervisedEngine",
    "compute_metrics",
    "module_device",
    "resolve_gpu",
    "to_device",
]
