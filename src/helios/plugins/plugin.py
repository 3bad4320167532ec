"""The plug-in interface, the plug-in registry and the built-in :py:class:`CUDAPlugin`."""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from helios.core import cuda
from helios.core.placement import RunPlacement
from helios.core.utils import Registry, convert_to_list

if TYPE_CHECKING:
    from helios.core.placement import RunTrainer
    from helios.core.training_state import TrainingState
    from helios.model import Model

PLUGIN_REGISTRY = Registry("plug-in")
"""Registry of :py:class:`Plugin` types.

Register a plug-in with the decorator and build it from its name with
:py:func:`create_plugin`:

.. code-block:: python

    import helios.plugins as hlp

    @hlp.PLUGIN_REGISTRY.register
    class MyPlugin(hlp.Plugin):
        ...
"""


def create_plugin(type_name: str, *args: Any, **kwargs: Any) -> Plugin:
    """Build a plug-in registered in :py:data:`PLUGIN_REGISTRY`.

    Args:
        type_name: the name the plug-in was registered under.
        *args: positional arguments for the plug-in's constructor.
        **kwargs: keyword arguments for the plug-in's constructor.

    Returns:
        The new plug-in.

    Raises:
        KeyError: if no plug-in is registered under ``type_name``.
    """
    return PLUGIN_REGISTRY.get(type_name)(*args, **kwargs)


@dataclasses.dataclass
class UniquePluginOverrides:
    """The hooks a plug-in overrides that at most one registered plug-in may override.

    A plug-in sets the flags of the hooks it takes over in its constructor. The trainer
    sends batches only through the plug-in that sets the matching ``*_batch`` flag.

    Args:
        training_batch: the plug-in processes training batches.
        validation_batch: the plug-in processes validation batches.
        testing_batch: the plug-in processes testing batches.
        should_training_stop: the plug-in can ask for training to stop.
    """

    training_batch: bool = False
    validation_batch: bool = False
    testing_batch: bool = False
    should_training_stop: bool = False


def _find_override_clash(plugin: Plugin, others: Mapping[str, Plugin]) -> tuple[str, str] | None:
    """Return the first ``(flag, other id)`` that ``plugin`` shares with ``others``."""
    for field in dataclasses.fields(UniquePluginOverrides):
        if not getattr(plugin.unique_overrides, field.name):
            continue
        for other_id, other in others.items():
            if other is not plugin and getattr(other.unique_overrides, field.name):
                return field.name, other_id
    return None


def validate_plugins(plugins: Mapping[str, Plugin]) -> None:
    """Check that no two plug-ins in a table set the same unique override.

    :py:meth:`Plugin._register_in_trainer` already runs this check for each new plug-in;
    this function checks a whole table, e.g. one filled by hand.

    Args:
        plugins: the plug-in table, keyed by plug-in id.

    Raises:
        ValueError: if two plug-ins set the same flag of
            :py:class:`UniquePluginOverrides`.
    """
    seen: dict[str, Plugin] = {}
    for plug_id, plugin in plugins.items():
        clash = _find_override_clash(plugin, seen)
        if clash is not None:
            raise ValueError(_clash_message(clash[0], plug_id, clash[1]))
        seen[plug_id] = plugin


def _clash_message(flag: str, plug_id: str, other_id: str) -> str:
    return (
        f"plug-in '{plug_id}' sets the unique override '{flag}', which plug-in "
        f"'{other_id}' already sets; only one registered plug-in may set each flag of "
        "UniquePluginOverrides"
    )


class Plugin(RunPlacement, abc.ABC):
    """Base class of plug-ins, which change the behaviour of the trainer's loops.

    Plug-ins have the same hooks as :py:class:`~helios.model.model.Model` (minus the
    steps), and the trainer always calls a plug-in's hook *before* the model's, so a
    plug-in can prepare state the model reads or override what the model does. Instead of
    ``*_step`` methods, plug-ins have ``process_*_batch`` methods that receive a batch and
    return it processed (moved to a device, filtered, converted, ...).

    Plug-ins live in the trainer's :py:attr:`~helios.trainer.Trainer.plugins` table, keyed
    by their id. The trainer never registers them: call :py:meth:`configure_trainer`, which
    normally just calls :py:meth:`_register_in_trainer`:

    .. code-block:: python

        import helios.plugins as hlp
        import helios.trainer as hlt

        class MyPlugin(hlp.Plugin):
            def __init__(self) -> None:
                super().__init__("my_plugin")
                self.unique_overrides.training_batch = True

            def configure_trainer(self, trainer: hlt.Trainer) -> None:
                self._register_in_trainer(trainer)

            def setup(self) -> None:
                pass

            def process_training_batch(self, batch, state):
                return batch[:2]

    Args:
        plug_id: the key of the plug-in in the trainer's plug-in table.
    """

    # The model's default state skips a plug-in it holds: a plug-in is a checkpoint part of
    # its own (helios.model.default_state).
    _state_kept_apart: ClassVar[bool] = True

    def __init__(self, plug_id: str) -> None:
        super().__init__(f"plug-in '{plug_id}'")
        self._plug_id = plug_id
        self._overrides = UniquePluginOverrides()

    @property
    def plug_id(self) -> str:
        """The key of the plug-in in the trainer's plug-in table."""
        return self._plug_id

    @property
    def unique_overrides(self) -> UniquePluginOverrides:
        """The unique hooks this plug-in overrides; set its flags in the constructor."""
        return self._overrides

    def configure_trainer(self, trainer: RunTrainer) -> None:
        """Configure the trainer before training or testing starts.

        The trainer never calls this; call it yourself once both exist. Override it to
        register the plug-in (:py:meth:`_register_in_trainer`) and any exception types it
        raises on purpose (:py:meth:`_append_train_exceptions`).

        Args:
            trainer: the trainer.
        """

    def configure_model(self, model: Model) -> None:
        """Configure the model before training or testing starts.

        The trainer never calls this; call it yourself once both exist.

        Args:
            model: the model.
        """

    @abc.abstractmethod
    def setup(self) -> None:
        """Prepare the plug-in.

        The trainer calls this when a run starts, after setting :py:attr:`trainer`,
        :py:attr:`device`, :py:attr:`rank`, :py:attr:`map_loc` and
        :py:attr:`is_distributed`, and before the model's
        :py:meth:`~helios.model.model.Model.setup`.
        """

    def on_training_start(self) -> None:
        """Run once when training starts, before the model's hook."""

    def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
        """Process a training batch before the model sees it.

        The trainer calls this only on the plug-in whose ``training_batch`` override flag is
        set.

        Args:
            batch: the batch returned by the training dataloader.
            state: the current training state.

        Returns:
            The processed batch. The batch itself by default.
        """
        return batch

    def on_training_end(self) -> None:
        """Run once when training ends, before the model's hook."""

    def on_validation_start(self, validation_cycle: int) -> None:
        """Run when a validation cycle starts, before the model's hook.

        Args:
            validation_cycle: the number of the validation cycle, counted from 0.
        """

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        """Process a validation batch before the model sees it.

        The trainer calls this only on the plug-in whose ``validation_batch`` override flag
        is set.

        Args:
            batch: the batch returned by the validation dataloader.
            step: the index of the batch in the validation cycle.

        Returns:
            The processed batch. The batch itself by default.
        """
        return batch

    def on_validation_end(self, validation_cycle: int) -> None:
        """Run when a validation cycle ends, before the model's hook.

        Args:
            validation_cycle: the number of the validation cycle, counted from 0.
        """

    def should_training_stop(self) -> bool:
        """Tell whether training should stop now.

        The trainer asks the plug-ins before it asks the model, at the same points (see
        :py:meth:`helios.model.model.Model.should_training_stop`).

        Returns:
            True to stop training. False by default.
        """
        return False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the plug-in from the state saved in a checkpoint.

        Args:
            state_dict: the state returned by :py:meth:`state_dict` when the checkpoint was
                saved.
        """

    def state_dict(self) -> dict[str, Any]:
        """Return the state of the plug-in to store in checkpoints.

        Returns:
            The state. Empty by default.
        """
        return {}

    def on_testing_start(self) -> None:
        """Run when testing starts, before the model's hook."""

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        """Process a testing batch before the model sees it.

        The trainer calls this only on the plug-in whose ``testing_batch`` override flag is
        set.

        Args:
            batch: the batch returned by the testing dataloader.
            step: the index of the batch.

        Returns:
            The processed batch. The batch itself by default.
        """
        return batch

    def on_testing_end(self) -> None:
        """Run when testing ends, before the model's hook."""

    def _append_train_exceptions(
        self, exc: type[Exception] | list[type[Exception]], trainer: RunTrainer
    ) -> None:
        """Add exception types that :py:meth:`~helios.trainer.Trainer.fit` re-raises.

        Types already in the trainer's list are not added again.

        Args:
            exc: an exception type or a list of them.
            trainer: the trainer.

        Raises:
            TypeError: if an entry is not an exception type.
        """
        _extend_exceptions(trainer.train_exceptions, exc, "exc")

    def _append_test_exceptions(
        self, exc: type[Exception] | list[type[Exception]], trainer: RunTrainer
    ) -> None:
        """Add exception types that :py:meth:`~helios.trainer.Trainer.test` re-raises.

        Types already in the trainer's list are not added again.

        Args:
            exc: an exception type or a list of them.
            trainer: the trainer.

        Raises:
            TypeError: if an entry is not an exception type.
        """
        _extend_exceptions(trainer.test_exceptions, exc, "exc")

    def _register_in_trainer(self, trainer: RunTrainer) -> None:
        """Add the plug-in to the trainer's plug-in table under :py:attr:`plug_id`.

        Args:
            trainer: the trainer.

        Raises:
            KeyError: if a plug-in with the same id is already registered.
            ValueError: if a registered plug-in already sets one of the flags of
                :py:attr:`unique_overrides` that this plug-in sets.
        """
        if self._plug_id in trainer.plugins:
            raise KeyError(f"a plug-in with id '{self._plug_id}' has already been registered")
        clash = _find_override_clash(self, trainer.plugins)
        if clash is not None:
            raise ValueError(_clash_message(clash[0], self._plug_id, clash[1]))
        trainer.plugins[self._plug_id] = self


def _extend_exceptions(
    target: list[type[Exception]],
    exc: type[Exception] | list[type[Exception]],
    arg_name: str,
) -> None:
    for entry in convert_to_list(exc):
        if not (isinstance(entry, type) and issubclass(entry, Exception)):
            raise TypeError(f"expected '{arg_name}' to hold exception types, got {entry!r}")
        if entry not in target:
            target.append(entry)


@PLUGIN_REGISTRY.register
class CUDAPlugin(Plugin):
    """Move the tensors of every batch to the CUDA device of the current process.

    The trainer sets :py:attr:`~Plugin.device` when a run starts: the training GPU, or the
    GPU of this process's local rank in a distributed run. Tensors are copied with
    ``non_blocking=True``.

    A batch may be a tensor, or a list, tuple or dict whose entries may be tensors; other
    entries are left as they are. Nested containers are not searched. For other batch
    layouts, derive from this class and override :py:meth:`_move_collection_to_device`.

    Raises:
        RuntimeError: if CUDA is not available.
    """

    plugin_id = "cuda"

    def __init__(self) -> None:
        super().__init__(self.plugin_id)
        try:
            cuda.requires_cuda_support()
        except RuntimeError as error:
            raise RuntimeError(
                "CUDAPlugin() moves every batch to a CUDA device, but CUDA is not available "
                f"on this machine (torch {torch.__version__}, CUDA build: "
                f"{torch.version.cuda or 'none'}). Leave the plug-in out to train on the CPU "
                "(move batches in train_step with .to(self.device)), or run where "
                "torch.cuda.is_available() is true"
            ) from error

        self.unique_overrides.training_batch = True
        self.unique_overrides.validation_batch = True
        self.unique_overrides.testing_batch = True

    def setup(self) -> None:
        """Nothing to prepare."""

    def configure_trainer(self, trainer: RunTrainer) -> None:
        """Register the plug-in in the trainer.

        Args:
            trainer: the trainer.
        """
        self._register_in_trainer(trainer)

    def _move_collection_to_device(
        self, batch: torch.Tensor | list[Any] | tuple[Any, ...] | dict[Any, Any]
    ) -> torch.Tensor | list[Any] | tuple[Any, ...] | dict[Any, Any]:
        """Move the tensors of a batch to :py:attr:`~Plugin.device`.

        Lists and dicts are updated in place; a tuple is rebuilt.

        Args:
            batch: a tensor, or a list, tuple or dict of entries.

        Returns:
            The batch with its tensors on the device.

        Raises:
            TypeError: if the batch is of any other type.
        """
        device = self.device
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, list):
            for i, value in enumerate(batch):
                if isinstance(value, torch.Tensor):
                    batch[i] = value.to(device, non_blocking=True)
            return batch
        if isinstance(batch, tuple):
            return tuple(
                value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                for value in batch
            )
        if isinstance(batch, dict):
            for key, value in batch.items():
                if isinstance(value, torch.Tensor):
                    batch[key] = value.to(device, non_blocking=True)
            return batch
        raise TypeError(
            f"CUDAPlugin cannot move a batch of type {type(batch).__name__}; "
            "expected a Tensor, list, tuple or dict (override _move_collection_to_device "
            "to handle other types)"
        )

    def process_training_batch(self, batch: Any, state: TrainingState) -> Any:
        """Move the training batch to the device.

        Args:
            batch: the batch.
            state: the current training state.

        Returns:
            The batch on the device.
        """
        return self._move_collection_to_device(batch)

    def process_validation_batch(self, batch: Any, step: int) -> Any:
        """Move the validation batch to the device.

        Args:
            batch: the batch.
            step: the index of the batch.

        Returns:
            The batch on the device.
        """
        return self._move_collection_to_device(batch)

    def process_testing_batch(self, batch: Any, step: int) -> Any:
        """Move the testing batch to the device.

        Args:
            batch: the batch.
            step: the index of the batch.

        Returns:
            The batch on the device.
        """
        return self._move_collection_to_device(batch)
