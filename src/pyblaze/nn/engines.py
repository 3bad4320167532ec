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
"""

from __future__ import annotations

import abc
import inspect
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader

from pyblaze.multiprocessing.prediction import predict_batches
from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback
from pyblaze.nn.history import Evaluation, History

if TYPE_CHECKING:
    from helios.plugins import Plugin

GpuArg = bool | int | str | Sequence[int] | None
Metric = Callable[[Any, Any], Any]

# Trainer arguments that ``train`` derives from its own arguments.
_RESERVED_TRAINER_OPTIONS = ("train_unit", "total_steps", "valid_frequency", "use_cpu", "gpus")


def resolve_gpu(gpu: GpuArg, multiple: bool = True) -> list[int]:
    """Turn a ``gpu`` argument into the list of GPU ids to use (empty for the CPU).

    Args:
        gpu: ``'auto'``, ``True``, ``False``, a GPU id or a list of GPU ids (see the module
            docstring).
        multiple: whether several GPUs may be used; if not, ``'auto'`` picks one GPU and a
            list must have one entry.

    Returns:
        The GPU ids, without duplicates; ``[]`` means the CPU.

    Raises:
        TypeError: if ``gpu`` has an unsupported type.
        ValueError: if ``gpu`` names a GPU that does not exist, requests a GPU without
            CUDA, is an unknown string or an empty list, or lists several GPUs when
            ``multiple`` is false.
    """
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if isinstance(gpu, bool):
        if not gpu:
            return []
        if count == 0:
            raise ValueError(
                "gpu=True requests a GPU, but CUDA is not available; pass gpu=False (CPU) "
                "or gpu='auto'"
            )
        return [_most_free_gpu(count)]
    if isinstance(gpu, str):
        if gpu != "auto":
            raise ValueError(
                f"gpu={gpu!r} is not a valid setting; expected 'auto', True, False, a GPU "
                "id or a list of GPU ids"
            )
        if count == 0:
            return []
        return list(range(count)) if multiple else [_most_free_gpu(count)]
    if isinstance(gpu, int):
        return [_check_gpu_id(gpu, count)]
    if isinstance(gpu, Sequence):
        if len(gpu) == 0:
            raise ValueError("gpu=[] selects no device; pass gpu=False for the CPU or list GPU ids")
        ids: list[int] = []
        for entry in gpu:
            if isinstance(entry, bool) or not isinstance(entry, int):
                raise TypeError(
                    f"gpu={list(gpu)!r} must list GPU ids as ints, but contains "
                    f"{entry!r} of type {type(entry).__name__}"
                )
            checked = _check_gpu_id(entry, count)
            if checked not in ids:
                ids.append(checked)
        if len(ids) > 1 and not multiple:
            raise ValueError(
                f"gpu={list(gpu)!r} lists several GPUs, but this engine supports only one"
            )
        return ids
    raise TypeError(
        "gpu must be 'auto', True, False, a GPU id or a list of GPU ids, but received "
        f"{gpu!r} of type {type(gpu).__name__}"
    )


def _check_gpu_id(gpu: int, count: int) -> int:
    if count == 0:
        raise ValueError(f"gpu={gpu} requests GPU {gpu}, but CUDA is not available")
    if not 0 <= gpu < count:
        raise ValueError(
            f"gpu={gpu} is not a valid GPU id; this machine has {count} GPU(s), with ids "
            f"0 to {count - 1}"
        )
    return gpu


def _most_free_gpu(count: int) -> int:
    free = [torch.cuda.mem_get_info(i)[0] for i in range(count)]
    return max(range(count), key=lambda i: (free[i], -i))


def _device_of(gpus: list[int]) -> torch.device:
    return torch.device("cuda", gpus[0]) if gpus else torch.device("cpu")


def module_device(module: nn.Module) -> torch.device:
    """Return the device of a module's first parameter or buffer (the CPU if it has none).

    Args:
        module: the module.

    Returns:
        The device.
    """
    for parameter in module.parameters():
        return parameter.device
    for buffer in module.buffers():
        return buffer.device
    return torch.device("cpu")


def to_device(data: Any, device: torch.device | str) -> Any:
    """Move tensors, and tensors nested in lists, tuples and dicts, to a device.

    Named tuples keep their type, :py:class:`~torch.nn.utils.rnn.PackedSequence` is moved
    as a whole, and anything else (``None``, numbers, strings, ...) is returned as is.

    Args:
        data: the data.
        device: the target device.

    Returns:
        The data on the device.
    """
    target = torch.device(device)
    non_blocking = target.type == "cuda"
    if isinstance(data, torch.Tensor):
        return data.to(target, non_blocking=non_blocking)
    if isinstance(data, PackedSequence):
        packed: Any = data  # its stubs do not list the device overload
        return packed.to(target, non_blocking=non_blocking)
    if isinstance(data, Mapping):
        return type(data)({k: to_device(v, target) for k, v in data.items()})  # type: ignore[call-arg]
    if isinstance(data, tuple) and hasattr(data, "_fields"):
        return type(data)(*(to_device(v, target) for v in data))
    if isinstance(data, list | tuple):
        return type(data)(to_device(v, target) for v in data)
    return data


def _concat(items: list[Any]) -> Any:
    """Concatenate per-batch outputs: tensors along dim 0, tuples and dicts element-wise."""
    if not items:
        return items
    first = items[0]
    if isinstance(first, torch.Tensor):
        if first.dim() == 0:
            return torch.stack(items)
        return torch.cat(items)
    if isinstance(first, tuple | list):
        return type(first)(_concat([item[i] for item in items]) for i in range(len(first)))
    if isinstance(first, Mapping):
        return {k: _concat([item[k] for item in items]) for k in first}
    return items


def compute_metrics(
    metrics: Mapping[str, Metric], predictions: Any, targets: Any
) -> dict[str, Any]:
    """Call every metric once on the predictions and targets of the whole data set.

    Args:
        metrics: ``{name: metric(predictions, targets)}``.
        predictions: the collated predictions.
        targets: the collated targets.

    Returns:
        ``{name: value}``; a metric that returns a dict ``{key: value}`` gives the entries
        ``name_key``. Values are Python numbers.

    Raises:
        ValueError: if a metric returns a tensor with more than one element.
    """
    values: dict[str, Any] = {}
    for name, metric in metrics.items():
        result = metric(predictions, targets)
        items = (
            {f"{name}_{k}": v for k, v in result.items()}
            if isinstance(result, Mapping)
            else {name: result}
        )
        for key, value in items.items():
            if isinstance(value, torch.Tensor):
                if value.numel() != 1:
                    raise ValueError(
                        f"metric {key!r} must return a single number, but returned a tensor "
                        f"of shape {tuple(value.shape)}"
                    )
                value = value.item()
            values[key] = value
    return values


def _check_callbacks(callbacks: Any) -> list[Any]:
    if callbacks is None:
        return []
    if not isinstance(callbacks, list | tuple):
        raise TypeError(
            "callbacks must be a list of TrainingCallback/PredictionCallback objects, but "
            f"received {type(callbacks).__name__}"
        )
    for callback in callbacks:
        if not isinstance(callback, TrainingCallback | PredictionCallback):
            raise TypeError(
                "callbacks must derive from xnn.TrainingCallback or xnn.PredictionCallback, "
                f"but received {callback!r} of type {type(callback).__name__}"
            )
    return list(callbacks)


def _check_metrics(metrics: Any) -> dict[str, Metric]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise TypeError(
            "metrics must be a dict {name: metric(y_pred, y_true)}, but received "
            f"{type(metrics).__name__}"
        )
    for name, metric in metrics.items():
        if not isinstance(name, str) or not callable(metric):
            raise TypeError(
                "metrics must map names (str) to callables metric(y_pred, y_true), but "
                f"received {name!r}: {metric!r}"
            )
    return dict(metrics)


def _check_optional_count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be None or an int >= 1, but received {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be None or an int >= 1, but received {value}")
    return value


def _num_batches(data: Iterable[Any], iterations: int | None, name: str) -> int:
    try:
        length = len(data)  # type: ignore[arg-type]
    except TypeError:
        if iterations is None:
            raise TypeError(
                f"{name} has no length; pass iterations= to say how many batches to use"
            ) from None
        return iterations
    return length if iterations is None else min(length, iterations)


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
            ``DistributedDataParallel``.
        device: the device of the current train/evaluate/predict call (``None`` outside
            of one).
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
        self._in_train = False

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
        model is put back on its original device first.

        Like every helios run, training seeds Python's, NumPy's and torch's global random
        generators; the seed is drawn from torch's generator, so ``torch.manual_seed``
        before ``fit`` makes the run reproducible. Checkpoints (``trainer_options``) hold
        the weights, the optimizer states and the history, not the state of callbacks.

        Args:
            train_data: the training data.
            val_data: the validation data, evaluated after every epoch.
            epochs: the number of epochs.
            val_iterations: use only this many batches of ``val_data``.
            eval_every: not supported (PyBlaze 1.1.6 uses it for infinite iterable data,
                which helios's resumable loaders cannot drive); must be ``None``.
            eval_train: also compute ``metrics`` on the whole training set after every
                epoch (``train_<metric>``).
            eval_val: compute the ``loss`` on the validation data (``val_loss``).
            callbacks: training and prediction callbacks (prediction callbacks follow the
                validation of every epoch).
            metrics: ``{name: metric(y_pred, y_true)}`` computed on the validation data
                (``val_<name>``).
            gpu: the device(s) to train on (see the module docstring).
            plugins: helios plug-ins to register in the Trainer.
            trainer_options: further arguments of :py:class:`helios.trainer.Trainer`.
            **kwargs: arguments of :py:meth:`train_batch` and (``eval_`` prefix)
                :py:meth:`eval_batch`.

        Returns:
            The history: ``micro_train_loss``, ``train_loss`` and the ``val_*`` and
            ``train_*`` metrics per epoch.

        Raises:
            TypeError: for an argument of the wrong type.
            ValueError: for an invalid value (``epochs`` < 1, an unknown GPU, a loader with
                a custom sampler, a reserved ``trainer_options`` key, ...).
        """
        from pyblaze.nn import _helios_run

        if not isinstance(train_data, DataLoader):
            raise TypeError(
                "train_data must be a torch.utils.data.DataLoader, but received "
                f"{type(train_data).__name__}"
            )
        if val_data is not None and not isinstance(val_data, DataLoader):
            raise TypeError(
                "val_data must be a torch.utils.data.DataLoader or None, but received "
                f"{type(val_data).__name__}"
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int):
            raise TypeError(f"epochs must be an int >= 1, but received {epochs!r}")
        if epochs < 1:
            raise ValueError(f"epochs must be an int >= 1, but received {epochs}")
        val_iterations = _check_optional_count("val_iterations", val_iterations)
        if eval_every is not None:
            raise ValueError(
                f"eval_every={eval_every!r} is not supported: in PyBlaze 1.1.6 it splits "
                "infinite iterable training data into epochs, and training here needs "
                "map-style data; use eval_every=None (validation runs after every epoch)"
            )
        all_callbacks = _check_callbacks(callbacks)
        metric_fns = _check_metrics(metrics)
        gpus = resolve_gpu(gpu, multiple=self.supports_multiple_gpus())
        plugin_list = _check_plugins(plugins)
        options = _check_trainer_options(trainer_options)

        train_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("eval_")}
        eval_kwargs = {k[len("eval_") :]: v for k, v in kwargs.items() if k.startswith("eval_")}
        _check_batch_kwargs(self, "train_batch", train_kwargs, "")
        if val_data is not None:
            _check_batch_kwargs(self, "eval_batch", eval_kwargs, "eval_")
        val_metrics = dict(metric_fns)
        if eval_val and "loss" in train_kwargs:
            val_metrics["loss"] = train_kwargs["loss"]

        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        run = _helios_run.EngineRun(
            engine=self,
            epochs=epochs,
            callbacks=all_callbacks,
            val_metrics=val_metrics if val_data is not None else {},
            train_metrics=metric_fns if eval_train else None,
            train_kwargs=train_kwargs,
            eval_kwargs=eval_kwargs,
            train_data=train_data,
        )
        datamodule = _helios_run.LoaderDataModule(train_data, val_data, seed, val_iterations)
        trainer_kwargs: dict[str, Any] = {
            "print_banner": False,
            "enable_progress_bar": False,
            "enable_deterministic": torch.are_deterministic_algorithms_enabled(),
            "random_seed": seed,
            "run_name": type(self.model).__name__,
        }
        trainer_kwargs.update(options)
        trainer_kwargs.update(
            train_unit="epoch",
            total_steps=epochs,
            valid_frequency=1 if val_data is not None else None,
            use_cpu=not gpus,
            gpus=gpus or None,
        )
        start = time.perf_counter()
        self._in_train = True
        try:
            epochs_run = run.execute(trainer_kwargs, plugin_list, datamodule)
        finally:
            self._in_train = False
        return History(time.perf_counter() - start, epochs_run)

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
            iterations: use only this many batches (needed for data without a length).
            metrics: ``{name: metric(y_pred, y_true)}``.
            callbacks: prediction callbacks (training callbacks in the list are ignored).
            gpu: the device (the first GPU of a list is used). ``None`` keeps the model
                where it is.
            **kwargs: arguments of :py:meth:`eval_batch`.

        Returns:
            The metric values.

        Raises:
            TypeError: for an argument of the wrong type.
            ValueError: for an invalid ``gpu`` or ``iterations``, or a metric that does not
                return a single number.
        """
        metric_fns = _check_metrics(metrics)
        outputs = self._run_batches(
            data, iterations, callbacks, gpu, lambda batch: self.eval_batch(batch, **kwargs)
        )
        predictions = self.collate_predictions([out[0] for out in outputs])
        targets = self.collate_targets([out[1] for out in outputs])
        return Evaluation(compute_metrics(metric_fns, predictions, targets))

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
            iterations: use only this many batches (needed for data without a length).
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
            TypeError: for an argument of the wrong type.
            ValueError: for an invalid ``gpu`` or ``iterations``.
        """
        if gpu is None:
            raise TypeError("predict needs a device: gpu must not be None")
        outputs = predict_batches(
            self, data, iterations, callbacks, gpu, parallel, kwargs,
            sequential=lambda: self._run_batches(
                data, iterations, callbacks, gpu, lambda batch: self.predict_batch(batch, **kwargs)
            ),
        )  # fmt: skip
        return self.collate_predictions(outputs)

    def _run_batches(
        self,
        data: Iterable[Any],
        iterations: int | None,
        callbacks: Sequence[PredictionCallback] | None,
        gpu: GpuArg,
        step: Callable[[Any], Any],
    ) -> list[Any]:
        """Run ``step`` on every batch in eval mode without gradients; outputs go to CPU."""
        iterations = _check_optional_count("iterations", iterations)
        listed = _check_callbacks(callbacks)
        prediction_callbacks: list[PredictionCallback] = [self] + [
            c for c in listed if isinstance(c, PredictionCallback)
        ]
        num_batches = _num_batches(data, iterations, "data")
        original_device = module_device(self.model)
        device = original_device if gpu is None else _device_of(resolve_gpu(gpu))
        was_training = self.model.training

        for callback in prediction_callbacks:
            callback.before_predictions(self.model, num_batches)
        previous_device, self.device = self.device, device
        self.model.to(device)
        self.model.eval()
        outputs: list[Any] = []
        try:
            with torch.no_grad():
                for index, batch in enumerate(data):
                    if index >= num_batches:
                        break
                    outputs.append(to_device(step(to_device(batch, device)), "cpu"))
                    for callback in prediction_callbacks:
                        callback.after_batch(None)
        finally:
            self.model.to(original_device)
            self.model.train(was_training)
            self.device = previous_device
        for callback in prediction_callbacks:
            callback.after_predictions()
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
        if isinstance(data, list | tuple):
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
        return _concat(predictions)

    def collate_targets(self, targets: list[Any]) -> Any:
        """Join the per-batch targets.

        Args:
            targets: one target per batch.

        Returns:
            Tensors concatenated along the first dimension (tuples and dicts element-wise).
        """
        return _concat(targets)

    def collate_losses(self, losses: list[Any]) -> dict[str, list[Any]]:
        """Name the per-batch losses of an epoch.

        The lists are averaged (weighted by batch size) into the epoch values.

        Args:
            losses: the values returned by :py:meth:`train_batch`.

        Returns:
            ``{"train_loss": losses}``.
        """
        return {"train_loss": losses}


class SupervisedEngine(BaseEngine):
    """Engine for supervised learning on ``(x, y)`` batches.

    ``train`` needs the keyword arguments ``optimizer`` (a ``torch.optim.Optimizer``) and
    ``loss`` (a callable ``loss(y_pred, y_true)``, e.g. ``nn.CrossEntropyLoss()``), and
    accepts ``gradient_accumulation_steps`` (default 1): gradients of that many batches
    are summed (each loss scaled by ``1 / steps``) before the optimizer steps, and the last
    batches of an epoch always step. The loss reported per batch is the unscaled loss.

    ``evaluate`` batches are ``(x, y)``; ``predict`` batches are just ``x``.

    Args:
        model: the model to train.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self._iteration: int | None = None
        self._num_iterations = 0

    def before_epoch(self, current: int, num_iterations: int) -> None:
        """Reset the batch counter of the epoch."""
        self._iteration = 0
        self._num_iterations = num_iterations

    def after_batch(self, *args: Any) -> None:
        """Count the batch."""
        if self._iteration is not None:
            self._iteration += 1

    def after_epoch(self, metrics: Evaluation) -> None:
        """Forget the batch counter."""
        self._iteration = None

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
        if self._iteration % steps == 0:
            optimizer.zero_grad()
        prediction, target = self.eval_batch(data)
        value = loss(prediction, target)
        (value / steps if steps > 1 else value).backward()
        done = self._iteration + 1
        if done % steps == 0 or done == self._num_iterations:
            optimizer.step()
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
        if not isinstance(data, list | tuple) or len(data) != 2:
            raise ValueError(
                "SupervisedEngine expects (x, y) batches, but received "
                f"{type(data).__name__}"
                + (f" of length {len(data)}" if isinstance(data, list | tuple) else "")
            )
        x, y = data
        return self.forward(x), y


def _check_batch_kwargs(
    engine: BaseEngine, name: str, kwargs: Mapping[str, Any], prefix: str
) -> None:
    """Check, before training starts, that a batch method accepts the given arguments."""
    try:
        inspect.signature(getattr(engine, name)).bind(None, **kwargs)
    except TypeError as error:
        given = sorted(f"{prefix}{k}" for k in kwargs)
        raise TypeError(
            f"{type(engine).__name__}.{name} cannot be called with the keyword arguments "
            f"given to fit ({given}): {error}"
        ) from None


def _check_plugins(plugins: Any) -> list[Plugin]:
    if plugins is None:
        return []
    from helios.plugins import Plugin

    if not isinstance(plugins, list | tuple):
        raise TypeError(
            f"plugins must be a list of helios plug-ins, but received {type(plugins).__name__}"
        )
    for plugin in plugins:
        if not isinstance(plugin, Plugin):
            raise TypeError(
                "plugins must derive from helios.plugins.Plugin, but received "
                f"{type(plugin).__name__}"
            )
    return list(plugins)


def _check_trainer_options(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(
            "trainer_options must be a dict of helios Trainer arguments, but received "
            f"{type(options).__name__}"
        )
    from helios.trainer import Trainer

    allowed = set(inspect.signature(Trainer).parameters) - set(_RESERVED_TRAINER_OPTIONS)
    reserved = sorted(set(options) & set(_RESERVED_TRAINER_OPTIONS))
    if reserved:
        raise ValueError(
            f"trainer_options may not set {reserved}: fit derives them from epochs, "
            "val_data and gpu"
        )
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(
            f"trainer_options has unknown Trainer arguments {unknown}; expected some of "
            f"{sorted(allowed)}"
        )
    return dict(options)


__all__ = [
    "BaseEngine",
    "SupervisedEngine",
    "compute_metrics",
    "module_device",
    "resolve_gpu",
    "to_device",
]
