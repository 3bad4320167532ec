"""Parts named in a config file: a registered type and its arguments, built when needed.

A model or data module that takes its parts from a config file declares them as
constructor parameters of these types; the ``helios`` command checks each part's arguments
against the registered class before anything trains, and hands the model a spec it builds
in ``setup`` (the model supplies what only it knows, such as the parameters an optimizer
trains):

.. code-block:: python

    from helios.cli import LossSpec, NetworkSpec, OptimizerSpec

    @hlm.MODEL_REGISTRY.register
    class Classifier(hlm.Model):
        def __init__(self, network: NetworkSpec, optimizer: OptimizerSpec, loss: LossSpec):
            super().__init__("classifier")
            self._specs = (network, optimizer, loss)

        def setup(self, fast_init: bool = False) -> None:
            network, optimizer, loss = self._specs
            self._net = network.build().to(self.device)
            self._optimizer = optimizer.build(self._net.parameters())
            self._criterion = loss.build()

The same model is built in Python with ``OptimizerSpec("SGD", lr=0.01)`` and so on. This
module imports no config library: models import it at no cost.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from helios.core.utils import Registry


def _registry(kind: str) -> Registry:
    """The registry of a kind of part (imported here, so this module stays light)."""
    if kind == "network":
        from helios.nn import NETWORK_REGISTRY

        return NETWORK_REGISTRY
    if kind == "optimizer":
        from helios.optim import OPTIMIZER_REGISTRY

        return OPTIMIZER_REGISTRY
    if kind == "scheduler":
        from helios.scheduler import SCHEDULER_REGISTRY

        return SCHEDULER_REGISTRY
    if kind == "loss":
        from helios.losses import LOSS_REGISTRY

        return LOSS_REGISTRY
    if kind == "metric":
        from helios.metrics import METRICS_REGISTRY

        return METRICS_REGISTRY
    if kind == "dataset":
        from helios.data import DATASET_REGISTRY

        return DATASET_REGISTRY
    if kind == "sampler":
        from helios.data import SAMPLER_REGISTRY

        return SAMPLER_REGISTRY
    if kind == "transform":
        from helios.data import TRANSFORM_REGISTRY

        return TRANSFORM_REGISTRY
    if kind == "collate_fn":
        from helios.data import COLLATE_FN_REGISTRY

        return COLLATE_FN_REGISTRY
    if kind == "plugin":
        from helios.plugins import PLUGIN_REGISTRY

        return PLUGIN_REGISTRY
    if kind == "model":
        from helios.model import MODEL_REGISTRY

        return MODEL_REGISTRY
    raise ValueError(f"unknown kind of part {kind!r}")


class Spec:
    """A part of a run named by its registered type, with the arguments to build it.

    Args:
        type: the name the part is registered under.
        args: its constructor arguments (keyword arguments).
        **kwargs: more constructor arguments (merged with ``args``).

    Raises:
        TypeError: if ``type`` is not a string or ``args`` is not a mapping.
    """

    kind: ClassVar[str] = ""
    """The registry the type is looked up in (``"optimizer"``, ...)."""

    supplied: ClassVar[int] = 0
    """How many leading constructor arguments the caller of :py:meth:`build` supplies."""

    def __init__(self, type: str, args: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not isinstance(type, str) or not type:
            raise TypeError(
                f"{self.__class__.__name__} type must be a registered name (a "
                f"non-empty str), got {type!r}"
            )
        if args is not None and not isinstance(args, Mapping):
            raise TypeError(
                f"{self.__class__.__name__} args must be a mapping of argument names "
                f"to values, got {args!r}"
            )
        self.type = type
        self.args: dict[str, Any] = {**(args or {}), **kwargs}

    @property
    def registry(self) -> Registry:
        """The registry :py:attr:`type` is looked up in."""
        return _registry(self.kind)

    def resolve(self) -> Any:
        """Return the registered class (or function) of this part.

        Raises:
            KeyError: if nothing is registered under :py:attr:`type`, listing what is.
        """
        return self.registry.get(self.type)

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Build the part: the registered type called with ``args``, then the spec's arguments.

        Args:
            *args: the leading arguments the caller supplies (an optimizer's parameters, a
                scheduler's optimizer, a sampler's dataset).
            **kwargs: arguments that replace the spec's own.

        Returns:
            The new object.
        """
        arguments = copy.deepcopy(self.args)
        arguments.update(kwargs)
        return self.resolve()(*args, **arguments)

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as it is written in a config file: ``{"type": ..., "args": ...}``."""
        return {"type": self.type, "args": copy.deepcopy(self.args)}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Spec):
            return NotImplemented
        return (self.kind, self.type, self.args) == (other.kind, other.type, other.args)

    def __hash__(self) -> int:
        return hash((self.kind, self.type))

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.type!r}, {self.args!r})"


class NetworkSpec(Spec):
    """A network of :py:data:`helios.nn.utils.NETWORK_REGISTRY`."""

    kind = "network"


class OptimizerSpec(Spec):
    """An optimizer of :py:data:`helios.optim.utils.OPTIMIZER_REGISTRY`; ``build(parameters)``."""

    kind = "optimizer"
    supplied = 1


class SchedulerSpec(Spec):
    """A scheduler of :py:data:`helios.scheduler.utils.SCHEDULER_REGISTRY`; ``build(optimizer)``."""

    kind = "scheduler"
    supplied = 1


class LossSpec(Spec):
    """A loss of :py:data:`helios.losses.utils.LOSS_REGISTRY`."""

    kind = "loss"


class MetricSpec(Spec):
    """A metric of :py:data:`helios.metrics.metrics.METRICS_REGISTRY`."""

    kind = "metric"


class DatasetSpec(Spec):
    """A dataset of :py:data:`helios.data.datamodule.DATASET_REGISTRY`."""

    kind = "dataset"


class SamplerSpec(Spec):
    """A sampler of :py:data:`helios.data.samplers.SAMPLER_REGISTRY`; ``build(dataset)``."""

    kind = "sampler"
    supplied = 1


class TransformSpec(Spec):
    """A transform of :py:data:`helios.data.transforms.TRANSFORM_REGISTRY`."""

    kind = "transform"


class CollateFnSpec(Spec):
    """A collate function of :py:data:`helios.data.datamodule.COLLATE_FN_REGISTRY`.

    :py:meth:`build` follows :py:func:`helios.data.create_collate_fn`: a registered plain
    function without arguments is returned as it is.
    """

    kind = "collate_fn"

    def build(self, *args: Any, **kwargs: Any) -> Any:
        """Return the collate function (built when it is a class or takes arguments)."""
        from helios.data import create_collate_fn

        arguments = copy.deepcopy(self.args)
        arguments.update(kwargs)
        return create_collate_fn(self.type, *args, **arguments)


SPEC_TYPES: tuple[type[Spec], ...] = (
    NetworkSpec,
    OptimizerSpec,
    SchedulerSpec,
    LossSpec,
    MetricSpec,
    DatasetSpec,
    SamplerSpec,
    TransformSpec,
    CollateFnSpec,
)
"""Every kind of part a constructor parameter can be declared as."""

__all__ = [
    "SPEC_TYPES",
    "CollateFnSpec",
    "DatasetSpec",
    "LossSpec",
    "MetricSpec",
    "NetworkSpec",
    "OptimizerSpec",
    "SamplerSpec",
    "SchedulerSpec",
    "Spec",
    "TransformSpec",
]
