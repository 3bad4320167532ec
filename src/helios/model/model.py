"""The :py:class:`Model` base class: the training code of a network, split into hooks."""

from __future__ import annotations

import abc
import contextlib
from typing import TYPE_CHECKING, Any

import torch

import helios.model.default_state as default_state
from helios.core.distributed import all_reduce_mean
from helios.core.placement import RunPlacement
from helios.core.precision import Precision

from .compile import compile_in_place
from .running_losses import RunningLosses
from .sharding import LayerSelector, shard_network

if TYPE_CHECKING:
    from helios.core.training_state import TrainingState


class Model(RunPlacement, abc.ABC):
    """Base class that holds the code needed to train, validate and test networks.

    The :py:class:`~helios.trainer.Trainer` owns the loops; a model fills in what happens at
    each point of them by overriding hooks. The same trainer can then drive any number of
    networks without duplicating the loop code. Every hook has a sensible default, so only
    :py:meth:`setup` has to be written.

    The model keeps four tables that the default hooks manage:

    * ``_loss_items``: the losses of the current batch, filled by :py:meth:`train_step`.
      Cleared by :py:meth:`on_training_batch_start`.
    * ``_running_losses``: per-key sums of the losses since the last validation cycle, kept
      as detached 0-dim tensors (see :py:meth:`on_training_batch_end`). Cleared by
      :py:meth:`on_validation_end`.
    * ``_val_scores``: validation values. Cleared by :py:meth:`on_validation_start`.
    * ``_test_scores``: testing values. Cleared by :py:meth:`on_testing_start`.

    A fifth table, :py:attr:`metrics`, holds the final metrics of the model. Nothing in the
    base class touches it: the model fills it and plug-ins (such as
    :py:class:`~helios.plugins.optuna.OptunaPlugin`) read it.

    Example:
        A plain PyTorch training loop body maps onto a model like this:

        .. code-block:: python

            import helios.model as hlm
            import helios.trainer as hlt

            class MyModel(hlm.Model):
                def setup(self, fast_init: bool = False) -> None:
                    self._net = Net().to(self.device)
                    self._optimizer = torch.optim.SGD(self._net.parameters(), lr=0.01)
                    self._criterion = torch.nn.CrossEntropyLoss()

                def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
                    inputs, labels = (x.to(self.device) for x in batch)
                    self._optimizer.zero_grad()
                    loss = self._criterion(self._net(inputs), labels)
                    loss.backward()
                    self._optimizer.step()
                    self._loss_items["loss"] = loss

    Args:
        save_name: the name that identifies the model in the names of checkpoints and
            saved networks.
    """

    def __init__(self, save_name: str) -> None:
        super().__init__(f"model '{save_name}'")
        self._save_name = save_name

        self._loss_items: dict[str, torch.Tensor] = {}
        self._running_losses: dict[str, torch.Tensor | float] = RunningLosses()
        self._val_scores: dict[str, Any] = {}
        self._test_scores: dict[str, Any] = {}
        self._metrics: dict[str, Any] = {}

    # -- precision, clipping and compile helpers ---------------------------------------

    def _run_precision(self) -> Precision:
        trainer = self._trainer
        return _FULL_PRECISION if trainer is None else trainer.precision

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """Return the context to run the forward pass and the loss in.

        ``torch.autocast`` in the run's dtype for ``"bf16-mixed"``/``"fp16-mixed"``; a no-op
        at ``"32"`` and when no trainer is set. See the example in :py:meth:`backward`.

        Returns:
            The context manager.
        """
        return self._run_precision().autocast()

    def backward(self, loss: torch.Tensor, **kwargs: Any) -> None:
        """Back-propagate ``loss``, scaled by the run's gradient scaler when it has one.

        With these helpers one step runs unchanged at every precision:

        .. code-block:: python

            def train_step(self, batch, state):
                inputs, labels = (x.to(self.device) for x in batch)
                with self.autocast():
                    loss = self._criterion(self._net(inputs), labels)
                self.backward(loss / self.trainer.accumulation_steps)
                if state.global_iteration % self.trainer.accumulation_steps == 0:
                    self.clip_gradients(self._optimizer, max_norm=1.0)  # optional
                    self.optimizer_step(self._optimizer)
                    self._optimizer.zero_grad()
                self._loss_items["loss"] = loss

        Args:
            loss: the loss (a scalar tensor).
            **kwargs: passed to :py:meth:`torch.Tensor.backward`.
        """
        self._run_precision().backward(loss, **kwargs)

    def clip_gradients(
        self,
        optimizer: torch.optim.Optimizer,
        max_norm: float | None = None,
        max_value: float | None = None,
        norm_type: float = 2.0,
    ) -> torch.Tensor | None:
        """Clip the gradients of ``optimizer``'s parameters by norm and/or by value.

        The gradients are unscaled first when the run scales its loss (once per optimizer
        step however often this is called), so the limits apply to the true gradients.
        Call it after the last backward pass of the step, right before
        :py:meth:`optimizer_step`.

        Args:
            optimizer: the optimizer whose parameters are clipped.
            max_norm: the largest total norm of the gradients.
            max_value: the largest absolute value of any gradient element.
            norm_type: the type of the norm (``math.inf`` for the max norm).

        Returns:
            The total norm before clipping (``None`` when only ``max_value`` is given).

        Raises:
            ValueError: if neither limit is given or a limit is not positive.
        """
        return self._run_precision().clip_gradients(
            optimizer, max_norm=max_norm, max_value=max_value, norm_type=norm_type
        )

    def optimizer_step(self, *optimizers: torch.optim.Optimizer) -> None:
        """Step the optimizers at the run's precision.

        ``optimizer.step()`` for each at ``"32"`` and ``"bf16-mixed"``. At ``"fp16-mixed"``
        the gradients are unscaled (unless :py:meth:`clip_gradients` did it), a step whose
        gradients hold inf or NaN is skipped, and the scale is updated once after all the
        optimizers. Pass every optimizer of the iteration in one call. Zeroing the gradients
        stays with the step.

        Args:
            *optimizers: the optimizers to step.
        """
        self._run_precision().step(*optimizers)

    def compile_networks(self, *names: str, **compile_kwargs: Any) -> list[str]:
        """Compile the model's networks in place with ``torch.compile``.

        Each network is compiled in place, as :py:meth:`torch.nn.Module.compile` does (see
        :py:func:`helios.model.compile.compile_module`): it keeps the module, its parameters
        (so the optimizers) and its ``state_dict`` keys, so checkpoints are the same with
        and without compile and load into either. A network that is already compiled is
        left alone; one wrapped by ``torch.compile`` is given ``state_dict`` hooks that drop
        (and on load accept) the wrapper's ``_orig_mod.`` prefix. Call it at the end of
        :py:meth:`setup` (after any forward hooks are registered), or let the trainer call
        it (``enable_compile=True``).

        Args:
            *names: attribute names of the networks to compile; none compiles every
                ``nn.Module`` attribute of the model that has parameters.
            **compile_kwargs: passed to ``torch.compile`` (``mode``, ``dynamic``, ...).

        Returns:
            The names of the networks compiled by this call.

        Raises:
            ValueError: if a name is not an ``nn.Module`` attribute of the model.
        """
        return compile_in_place(self, names, compile_kwargs)

    def shard_network(
        self,
        network: torch.nn.Module,
        layers: LayerSelector | None = None,
        *,
        reshard_after_forward: bool = True,
    ) -> torch.nn.Module:
        """Shard a network over the run's processes with FSDP2; call it in :py:meth:`setup`.

        Every rank then holds its shard of the network's parameters, of their gradients and
        of the optimizer state (create the optimizers after this call). ``fully_shard`` is
        applied to each layer and to the network, with the run's mixed-precision policy
        (:py:func:`helios.model.sharding.shard_network`). Checkpoints of a sharded model
        are written by every rank through Distributed Checkpoint and resume on any number
        of processes. In a run of one process without a process group the network is
        returned as it is, so the same model trains anywhere.

        .. code-block:: python

            def setup(self, fast_init: bool = False) -> None:
                self._net = self.shard_network(Net().to(self.device))
                self._optimizer = torch.optim.AdamW(self._net.parameters(), lr=1e-3)

        A network too large for one device can be built on the meta device and
        materialised after sharding, each rank allocating only its shards:

        .. code-block:: python

            with torch.device("meta"):
                net = Net()
            self._net = self.shard_network(net)
            self._net.to_empty(device=self.device)
            self._net.reset_parameters()  # your initialisation, on each rank's shards

        Args:
            network: the network, on :py:attr:`device`.
            layers: the submodules sharded as one unit each: ``nn.Module`` types or a
                function of a module; ``None`` picks the entries of the network's
                ``ModuleList``/``Sequential`` containers
                (:py:func:`helios.model.sharding.default_layers`).
            reshard_after_forward: free each layer's gathered parameters after its forward
                pass.

        Returns:
            The network, sharded in place when the run is distributed.
        """
        if not self.is_distributed:
            return network
        return shard_network(
            network,
            device_type=self.device.type,
            layers=layers,
            precision=self._run_precision().name,
            reshard_after_forward=reshard_after_forward,
        )

    @property
    def save_name(self) -> str:
        """The name used for the checkpoints and the saved networks of the model."""
        return self._save_name

    @property
    def loss_items(self) -> dict[str, torch.Tensor]:
        """The losses of the current batch (the ``_loss_items`` table ``train_step`` fills)."""
        return self._loss_items

    @property
    def running_losses(self) -> RunningLosses:
        """The sums of the losses since the last validation (the ``_running_losses`` table).

        A checkpoint part of its own (:py:class:`~helios.model.running_losses.RunningLosses`).
        """
        losses = self._running_losses
        if not isinstance(losses, RunningLosses):  # replaced by a plain dict
            losses = self._running_losses = RunningLosses(losses)
        return losses

    @property
    def metrics(self) -> dict[str, Any]:
        """The table of final metrics of the model.

        This is the model's own, mutable table: write the metrics into it (for example
        ``self.metrics["accuracy"] = acc`` in :py:meth:`on_validation_end`) and plug-ins
        read them from it. A subclass may also override the property to compute the table
        on demand.
        """
        return self._metrics

    @abc.abstractmethod
    def setup(self, fast_init: bool = False) -> None:
        """Create everything the model needs to train.

        Build the networks, optimizers, schedulers, losses, etc. here. The trainer calls
        this once the device, rank and trainer have been set and after any distributed
        processes have been started, so :py:attr:`device` is valid.

        Args:
            fast_init: if true, only build the network(s) and skip any training state
                (optimizers, schedulers, ...). The trainer passes true for testing.
        """

    def load_for_testing(self) -> None:
        """Load the network(s) used for testing.

        The trainer calls this from :py:meth:`~helios.trainer.Trainer.test` when it cannot
        find a checkpoint to load. Override it to load the network(s) from somewhere else,
        such as a pre-trained file.
        """

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        """Restore the model from a state dictionary.

        The trainer calls this with the model's entry of a checkpoint. Tensors in it have
        already been mapped to the right device.

        By default it restores what the default :py:meth:`state_dict` saved into the
        networks, optimizers, LR schedulers and gradient scalers found on the model (only the
        networks when ``fast_init`` is true). A subclass that overrides :py:meth:`state_dict`
        but not this method gets nothing restored (and a warning saying so).

        Args:
            state_dict: the state returned by :py:meth:`state_dict` when the checkpoint was
                saved.
            fast_init: if true, restore only the network(s), not the training state.

        Raises:
            KeyError: if the saved entries and the model's attributes do not match.
        """
        if type(self).state_dict is not Model.state_dict:
            default_state.warn(
                f"model '{self.save_name}' ({type(self).__name__}) overrides state_dict() "
                "but not load_state_dict(): nothing of the checkpoint was restored into it"
            )
            return
        default_state.restore(self, state_dict, fast_init)

    def state_dict(self) -> dict[str, Any]:
        """Return the state of the model to store in checkpoints.

        By default it holds the ``state_dict()`` of every network (``torch.nn.Module``),
        optimizer, LR scheduler and gradient scaler among the model's attributes, keyed by
        attribute name (see :py:mod:`helios.model.default_state`; wrappers such as DDP or
        ``torch.compile`` are saved by the module they wrap). Other state (tensors, NumPy
        arrays, random generators, ...) is not saved: the first call names it, or says that
        nothing was found, in a warning (root logger and ``warnings``). Override this method
        and :py:meth:`load_state_dict` to save it; ``super().state_dict()`` keeps the
        default entries.

        Returns:
            Everything needed to resume training (networks, optimizers, ...).
        """
        saved, unsaved = default_state.find_state(self)
        if type(self).state_dict is Model.state_dict and not getattr(
            self, "_default_state_reported", False
        ):
            self._default_state_reported = True
            default_state.report_unsaved(self, saved, unsaved)
        return default_state.gather(saved)

    def types_for_safe_load(self) -> list[type]:
        """Return the extra types a checkpoint of this model contains.

        Checkpoints are loaded with ``torch.load(weights_only=True)``, which only rebuilds
        tensors, builtins and registered types. The trainer registers the types returned
        here (with :py:func:`torch.serialization.add_safe_globals`) before it reads a
        checkpoint, so a :py:meth:`state_dict` holding e.g. a dataclass or an enum of yours
        loads. Added in Helios 1.3.0.

        Returns:
            The types; empty by default.
        """
        return []

    def trained_state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Return the state of the fully trained model.

        Unlike :py:meth:`state_dict`, this should hold only what is needed to re-create the
        network(s) for inference, plus any extra data of your choice. The trainer never
        calls it; it is meant for your own export code.

        Args:
            *args: positional arguments of your choice.
            **kwargs: keyword arguments of your choice.

        Returns:
            The state without any training data. Empty by default.
        """
        return {}

    def append_metadata_to_chkpt_name(self, chkpt_name: str) -> str:
        """Add extra information to the name of a checkpoint file.

        Use it to put loss values, validation metrics or anything else in the file name.
        The epoch and iteration numbers and the extension are added by the trainer.

        Args:
            chkpt_name: the checkpoint name, without extension.

        Returns:
            The name with any extra information. Unchanged by default.
        """
        return chkpt_name

    def append_to_banner(self, banner: str) -> str:
        """Add extra information to the banner printed when a run starts.

        The banner is only shown when the trainer's ``print_banner`` is true.

        Args:
            banner: the banner built by the trainer.

        Returns:
            The banner with any extra information. Unchanged by default.
        """
        return banner

    def train(self) -> None:
        """Switch the network(s) to training mode."""

    def eval(self) -> None:
        """Switch the network(s) to evaluation mode."""

    def on_training_start(self) -> None:
        """Run once when training starts, before the first epoch.

        Use it to log the network architecture, the hyper-parameters, etc.
        """

    def on_training_epoch_start(self, current_epoch: int) -> None:
        """Run at the top of every training epoch.

        Args:
            current_epoch: the number of the epoch that is starting.
        """

    def on_training_batch_start(self, state: TrainingState) -> None:
        """Run before :py:meth:`train_step` for every batch.

        By default it clears the loss table ``_loss_items``; call ``super()`` when
        overriding it to keep that.

        Args:
            state: the current training state.
        """
        self._loss_items.clear()

    def train_step(self, batch: Any, state: TrainingState) -> None:
        """Perform one training step on a batch.

        Run the forward and backward passes here (and step the optimizers and schedulers),
        then store the losses in ``self._loss_items`` so that
        :py:meth:`on_training_batch_end` can average and accumulate them.

        Warning:
            The batch is not moved to any device before this call (unless a plug-in such as
            :py:class:`~helios.plugins.CUDAPlugin` does it); move it yourself with
            :py:attr:`device`.

        Args:
            batch: the batch returned by the training dataloader.
            state: the current training state.
        """

    def on_training_batch_end(self, state: TrainingState, should_log: bool = False) -> None:
        """Run after :py:meth:`train_step` for every batch.

        By default it does two things with the losses in ``self._loss_items``:

        1. In a distributed run, each loss is replaced by its average across all ranks,
           computed on a detached copy. Run any backward pass before calling ``super()``.
        2. Each loss is added to ``self._running_losses[key]``. The running sums are
           detached 0-dim tensors on the device of the loss, so no host-device
           synchronisation happens here. Format them directly (``f"{v:.3f}"``) or call
           ``.item()`` only when a log line is actually written.

        The trainer counts the iterations since the last validation in
        ``state.running_iter``; the sums hold one term per batch, so
        ``self._running_losses[key] / (state.running_iter * self.trainer.accumulation_steps)``
        is the running mean in the ITERATION unit (without accumulation, and in the EPOCH
        unit, ``self._running_losses[key] / state.running_iter``).

        Args:
            state: the current training state.
            should_log: true when the print frequency of the trainer says a log line is due.
        """
        if self._is_distributed:
            for key, loss in self._loss_items.items():
                if isinstance(loss, torch.Tensor):
                    value = loss.detach().clone()
                    if not (value.is_floating_point() or value.is_complex()):
                        value = value.float()
                    self._loss_items[key] = all_reduce_mean(value)

        for key, loss in self._loss_items.items():
            if loss is None:
                continue
            value = loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(loss)
            previous = self._running_losses.get(key)
            # clone() so that the running sum never aliases a tensor the user owns.
            self._running_losses[key] = value.clone() if previous is None else previous + value

    def on_training_epoch_end(self, current_epoch: int) -> None:
        """Run at the bottom of every training epoch.

        Args:
            current_epoch: the number of the epoch that has just ended.
        """

    def on_training_end(self) -> None:
        """Run once when training ends.

        Use it for work that happens only at the end, such as updating weight-averaged
        networks or logging the final hyper-parameters and metrics.
        """

    def on_validation_start(self, validation_cycle: int) -> None:
        """Run when a validation cycle starts.

        By default it clears the validation table ``_val_scores``; call ``super()`` when
        overriding it to keep that.

        Args:
            validation_cycle: the number of the validation cycle, counted from 0.
        """
        self._val_scores.clear()

    def on_validation_batch_start(self, step: int) -> None:
        """Run before :py:meth:`valid_step` for every validation batch.

        Args:
            step: the index of the batch in the validation cycle.
        """

    def valid_step(self, batch: Any, step: int) -> None:
        """Perform one validation step on a batch.

        Compute whatever the validation metric(s) need and store it in
        ``self._val_scores``. Gradients are disabled by the trainer.

        Args:
            batch: the batch returned by the validation dataloader.
            step: the index of the batch in the validation cycle.
        """

    def on_validation_batch_end(self, step: int) -> None:
        """Run after :py:meth:`valid_step` for every validation batch.

        Args:
            step: the index of the batch in the validation cycle.
        """

    def on_validation_end(self, validation_cycle: int) -> None:
        """Run when a validation cycle ends.

        Compute and log the final validation metrics here. By default it clears the
        running losses ``_running_losses``, which restart with the next batch; call
        ``super()`` after you have read them. (The trainer clears them after this hook in
        any case, and also when there is no validation data.)

        Args:
            validation_cycle: the number of the validation cycle, counted from 0.
        """
        self._running_losses.clear()

    def have_metrics_improved(self) -> bool:
        """Tell whether the last validation cycle improved on the previous ones.

        The trainer calls this right after each validation cycle; when early stopping is
        enabled, a false answer increases the count of cycles without improvement.

        Returns:
            True if the metrics improved. True by default.
        """
        return True

    def should_save_checkpoint(self) -> bool:
        """Tell whether to save the checkpoint that is due now (``chkpt_frequency``).

        Override it to veto saves, e.g. to save only when the metrics improved. The trainer
        asks right before each due save; in a distributed run a veto on any rank skips the
        save on all ranks. The newest checkpoint is the resume point: a vetoed save means a
        crash resumes from an older one.

        Returns:
            True to save. True by default.
        """
        return True

    def should_training_stop(self) -> bool:
        """Tell whether training should stop now.

        Use it to stop when a metric crosses a threshold, a loss becomes invalid, etc. The
        trainer asks (after asking the plug-ins):

        * after each full training step (:py:meth:`on_training_batch_start`,
          :py:meth:`train_step` and :py:meth:`on_training_batch_end`),
        * after each validation cycle, once all validation hooks have run,
        * after each epoch when training by epoch, after :py:meth:`on_training_epoch_end`.

        Returns:
            True to stop training. False by default.
        """
        return False

    def on_testing_start(self) -> None:
        """Run when testing starts.

        By default it clears the testing table ``_test_scores``; call ``super()`` when
        overriding it to keep that.
        """
        self._test_scores.clear()

    def on_testing_batch_start(self, step: int) -> None:
        """Run before :py:meth:`test_step` for every testing batch.

        Args:
            step: the index of the batch.
        """

    def test_step(self, batch: Any, step: int) -> None:
        """Perform one testing step on a batch.

        Compute whatever the testing metric(s) need and store it in
        ``self._test_scores``. Gradients are disabled by the trainer.

        Args:
            batch: the batch returned by the testing dataloader.
            step: the index of the batch.
        """

    def on_testing_batch_end(self, step: int) -> None:
        """Run after :py:meth:`test_step` for every testing batch.

        Args:
            step: the index of the batch.
        """

    def on_testing_end(self) -> None:
        """Run when testing ends.

        Compute and log the final testing metrics here.
        """


def register_model_types_for_safe_load(model: Model) -> None:
    """Register :py:meth:`Model.types_for_safe_load` for ``torch.load(weights_only=True)``.

    The trainer calls it right before it reads a checkpoint.

    Args:
        model: the model whose types to register.

    Raises:
        TypeError: if ``types_for_safe_load()`` does not return a list/tuple of types.
    """
    types = model.types_for_safe_load()
    if not isinstance(types, (list, tuple)) or not all(isinstance(t, type) for t in types):
        raise TypeError(
            f"{type(model).__name__}.types_for_safe_load() must return a list of "
            f"types (classes), got {types!r}"
        )
    if types:
        torch.serialization.add_safe_globals(list(types))


_FULL_PRECISION = Precision("32")
