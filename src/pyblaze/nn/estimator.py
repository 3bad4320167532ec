"""The :py:class:`Estimator` mixin: ``fit``, ``evaluate`` and ``predict`` on the model."""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from helios.loggers import ExperimentLogger
    from helios.plugins import Plugin
    from pyblaze.nn._gpus import GpuArg
    from pyblaze.nn._metrics import Metric
    from pyblaze.nn.callbacks.base import PredictionCallback, TrainingCallback
    from pyblaze.nn.engines import BaseEngine
    from pyblaze.nn.history import Evaluation, History


class Estimator:
    """Mixin that gives a module ``fit``, ``evaluate`` and ``predict``.

    The methods delegate to the model's engine, an instance of the class attribute
    ``__engine__`` built on first use and cached on the model (the same engine object is
    returned by every later access of :py:attr:`engine`).

    Example:
        .. code-block:: python

            class Model(xnn.Estimator, nn.Module):
                __engine__ = xnn.SupervisedEngine
                ...

            history = model.fit(train_loader, val_data=val_loader, epochs=20,
                                optimizer=optimizer, loss=nn.CrossEntropyLoss())
    """

    __engine__: ClassVar[type[BaseEngine]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        engine = cls.__dict__.get("__engine__")
        if isinstance(engine, type) and "fit" not in cls.__dict__:
            cls.fit = _fit_showing_engine_arguments(cls, engine)  # type: ignore[method-assign]

    @property
    def engine(self) -> BaseEngine:
        """The model's engine (built on first access, then cached).

        Raises:
            TypeError: if the class has no ``__engine__``.
        """
        engine = self.__dict__.get("_pyblaze_engine")
        if engine is None:
            engine_cls = getattr(type(self), "__engine__", None)
            if engine_cls is None:
                raise TypeError(
                    f"{type(self).__name__} has no default engine: set the class attribute "
                    "__engine__ (e.g. __engine__ = xnn.SupervisedEngine) or override the "
                    "engine property"
                )
            engine = engine_cls(self)
            self.__dict__["_pyblaze_engine"] = engine
        return engine

    def prepare_input(self, data: Any) -> Any:
        """Turn the data given to ``fit``/``evaluate``/``predict`` into what the engine takes.

        Args:
            data: the data as given.

        Returns:
            The data unchanged; override it to accept other inputs (arrays, ...).
        """
        return data

    if TYPE_CHECKING:
        # What IDEs and type checkers see: the engine's train arguments by name.
        def fit(
            self,
            data: Any,
            val_data: Any = None,
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
            **engine_kwargs: Any,
        ) -> History:
            """See the run-time ``fit`` below."""

    else:

        def fit(self, *args: Any, **kwargs: Any) -> History:
            """Train the model with its engine (see :py:meth:`pyblaze.nn.BaseEngine.train`).

            The data comes first (or as ``data=``), then the arguments of the engine's
            ``train`` (``val_data``, ``epochs``, ``callbacks``, ``metrics``, ``gpu``, the
            helios options) and its training arguments (``optimizer`` and ``loss`` for
            :py:class:`~pyblaze.nn.SupervisedEngine`). On a model class with an
            ``__engine__``, ``help(Model.fit)`` and ``inspect.signature`` show them all by
            name, with their defaults.

            Args:
                *args: the training data first (or ``data=``), then the other arguments of
                    ``train``.
                **kwargs: the keyword arguments of ``train``.

            Returns:
                The training history.

            Raises:
                TypeError: if no data is given.
            """
            data, args, kwargs = self._split_data(args, kwargs)
            return self.engine.train(data, *args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> Evaluation:
        """Evaluate the model with its engine (see :py:meth:`pyblaze.nn.BaseEngine.evaluate`).

        Args:
            *args: the data first (or ``data=``), then the other arguments of ``evaluate``.
            **kwargs: the keyword arguments of ``evaluate``.

        Returns:
            The metric values.

        Raises:
            TypeError: if no data is given.
        """
        data, args, kwargs = self._split_data(args, kwargs)
        return self.engine.evaluate(data, *args, **kwargs)

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        """Run the model with its engine (see :py:meth:`pyblaze.nn.BaseEngine.predict`).

        Args:
            *args: the data first (or ``data=``), then the other arguments of ``predict``.
            **kwargs: the keyword arguments of ``predict``.

        Returns:
            The predictions.

        Raises:
            TypeError: if no data is given.
        """
        data, args, kwargs = self._split_data(args, kwargs)
        return self.engine.predict(data, *args, **kwargs)

    def _split_data(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[Any, tuple[Any, ...], dict[str, Any]]:
        if "data" in kwargs:
            data = kwargs.pop("data")
        elif args:
            data, args = args[0], args[1:]
        else:
            raise TypeError("the data must be given as the first argument or as data=")
        return self.prepare_input(data), args, kwargs


def _fit_showing_engine_arguments(cls: type, engine: Any) -> Any:
    """The inherited ``fit``, with a signature naming the engine's arguments.

    The signature is the engine's ``train`` (the data first, as ``data``) followed by the
    training arguments of its ``train_batch`` as keywords (``optimizer``, ``loss`` and
    ``gradient_accumulation_steps`` for :py:class:`~pyblaze.nn.SupervisedEngine`), so
    ``help(Model.fit)`` and the signature help of notebooks and IDEs show them.
    """
    inherited = next(
        vars(base)["fit"] for base in cls.__mro__[1:] if "fit" in vars(base)
    )  # fmt: skip

    @functools.wraps(inherited)
    def fit(self: Any, *args: Any, **kwargs: Any) -> Any:
        return inherited(self, *args, **kwargs)

    kinds = inspect.Parameter
    train = list(inspect.signature(engine.train).parameters.values())
    parameters = [train[0], train[1].replace(name="data")]
    parameters += [p for p in train[2:] if p.kind is not kinds.VAR_KEYWORD]
    known = {p.name for p in parameters}
    batch = list(inspect.signature(engine.train_batch).parameters.values())[2:]
    parameters += [
        p.replace(kind=kinds.KEYWORD_ONLY)
        for p in batch
        if p.name not in known and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    ]
    parameters.append(kinds("engine_kwargs", kinds.VAR_KEYWORD))
    fit.__signature__ = inspect.signature(inherited).replace(  # type: ignore[attr-defined]
        parameters=parameters, return_annotation=inspect.signature(engine.train).return_annotation
    )
    return fit


__all__ = ["Estimator"]
