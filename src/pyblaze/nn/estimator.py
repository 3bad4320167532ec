"""The :py:class:`Estimator` mixin: ``fit``, ``evaluate`` and ``predict`` on the model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
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

    def fit(self, *args: Any, **kwargs: Any) -> History:
        """Train the model with its engine (see :py:meth:`pyblaze.nn.BaseEngine.train`).

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


__all__ = ["Estimator"]
