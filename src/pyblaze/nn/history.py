"""The results of training (:py:class:`History`) and of evaluation (:py:class:`Evaluation`)."""

from __future__ import annotations

import json
import math
import os
import pathlib
from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from typing import Any

import torch


def _to_number(name: str, value: Any) -> Any:
    """Turn 0-dim tensors and numpy scalars into Python numbers; leave the rest as is."""
    if type(value) is float or type(value) is int:  # most values; not numpy's subclasses
        return value
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"metric {name!r} must be a single number, but is a tensor of shape "
                f"{tuple(value.shape)}"
            )
        return value.item()
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, list | tuple | dict):
        return item()
    return value


def _mean(name: str, values: Sequence[Any], weights: Sequence[float] | None) -> float:
    numbers = [float(_to_number(name, v)) for v in values]
    if not numbers:
        return math.nan
    if weights:
        if len(weights) != len(numbers):
            raise ValueError(
                f"metric {name!r} has {len(numbers)} values but {len(weights)} weights"
            )
        total = float(sum(weights))
        return sum(w * v for w, v in zip(weights, numbers)) / total
    return sum(numbers) / len(numbers)


class _MetricNames(list[str]):
    """The sorted metric names (PyBlaze 1.1.6's ``ev.keys``), also callable as a mapping's."""

    def __init__(self, evaluation: Evaluation) -> None:
        super().__init__(sorted(evaluation._metrics))
        self._evaluation = evaluation

    def __call__(self) -> KeysView[str]:
        return KeysView(self._evaluation)


class Evaluation(Mapping[str, Any]):
    """Named metric values, readable as attributes, as items and as a read-only mapping.

    Returned by :py:meth:`~pyblaze.nn.BaseEngine.evaluate` and passed to
    :py:meth:`~pyblaze.nn.TrainingCallback.after_epoch`. A list value is averaged, weighted
    by ``weights`` (for example the batch sizes) when they are given; 0-dim tensors become
    Python floats. Keys that start with ``_`` are private: they are listed by :py:attr:`keys`
    but left out of :py:meth:`to_dict`.

    It is a read-only :py:class:`~collections.abc.Mapping` too, so code written for Keras's
    ``logs`` dict works: ``logs.items()``, ``logs.get("val_loss")``, ``for name in logs``,
    ``dict(logs)``, ``len(logs)``. PyBlaze 1.1.6's accesses keep working: ``ev.accuracy``,
    ``ev["accuracy"]``, ``"accuracy" in ev`` and ``ev.keys`` (the sorted list of names,
    private ones included; calling it, ``ev.keys()``, gives the mapping's keys view of the
    same names).

    Example:
        >>> ev = Evaluation({"accuracy": 0.5, "loss": [1.0, 3.0]}, weights=[3, 1])
        >>> ev.accuracy, ev["loss"], "loss" in ev
        (0.5, 1.5, True)
        >>> sorted(ev.items()), ev.get("val_loss", 0.0)
        ([('accuracy', 0.5), ('loss', 1.5)], 0.0)

    Args:
        metrics: the metric values.
        weights: optional weights for averaging list values.
    """

    def __init__(self, metrics: Mapping[str, Any], weights: Sequence[float] | None = None) -> None:
        values: dict[str, Any] = {}
        for name, value in metrics.items():
            if isinstance(value, list | tuple):
                values[name] = _mean(name, value, weights)
            else:
                values[name] = _to_number(name, value)
        self._metrics = values

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails; guard against recursion during unpickling.
        if name.startswith("__") or "_metrics" not in self.__dict__:
            raise AttributeError(name)
        return self._metric(name, AttributeError)

    def __getitem__(self, name: str) -> Any:
        return self._metric(name, KeyError)

    def _metric(self, name: str, missing: type[Exception]) -> Any:
        if name in self._metrics:
            return self._metrics[name]
        raise missing(
            f"Evaluation does not provide metric {name!r}; available metrics: {self.keys}"
        )

    def __contains__(self, name: object) -> bool:
        return name in self._metrics

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._metrics))

    def __len__(self) -> int:
        return len(self._metrics)

    def __repr__(self) -> str:
        return f"Evaluation({self.to_dict()!r})"

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Evaluation):
            return self._metrics == other._metrics
        if isinstance(other, Mapping):
            return self._metrics == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    @property
    def keys(self) -> _MetricNames:
        """The sorted names of all metrics, private ones included; ``keys()`` works too."""
        return _MetricNames(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the public metrics (names not starting with ``_``) as a plain dict.

        Returns:
            ``{name: value}``, sorted by name.
        """
        return {k: self._metrics[k] for k in self.keys if not k.startswith("_")}

    def with_prefix(self, prefix: str) -> Evaluation:
        """Return a copy whose metric names start with ``prefix``.

        Args:
            prefix: the text put in front of every name, e.g. ``"val_"``.

        Returns:
            The renamed evaluation.
        """
        return Evaluation({f"{prefix}{k}": v for k, v in self._metrics.items()})

    @staticmethod
    def merge(*evaluations: Evaluation) -> Evaluation:
        """Combine the metrics of several evaluations; later ones win on equal names.

        Args:
            *evaluations: the evaluations to merge.

        Returns:
            The merged evaluation.
        """
        merged: dict[str, Any] = {}
        for evaluation in evaluations:
            merged.update(evaluation._metrics)
        return Evaluation(merged)


class History:
    """The record of a training run: one entry of metrics per epoch.

    Every key is readable as an attribute that gives one value per epoch, except
    ``micro_train_loss``, whose per-epoch lists are joined into one list with a value per
    batch. Keys:

    * ``micro_train_loss``: the loss of every training batch;
    * ``train_loss``: the loss of every epoch, the mean of its batch losses weighted by the
      batch sizes;
    * ``val_loss`` and ``val_<metric>``: whole-validation-set values (with ``val_data``);
    * ``train_<metric>``: whole-training-set values (with ``eval_train=True``).

    ``len(history)`` is the number of epochs run, the one in which early stopping fired
    included. A key missing from some epochs gives the values of the epochs that have it.

    Args:
        duration: the wall time of the run, in seconds.
        metrics: one ``{key: value}`` entry per epoch.
    """

    def __init__(self, duration: float, metrics: Iterable[Mapping[str, Any]]) -> None:
        self.duration = float(duration)
        self._epochs = [dict(entry) for entry in metrics]

    def __len__(self) -> int:
        return len(self._epochs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_epochs" not in self.__dict__:
            raise AttributeError(name)
        if name not in self.keys:
            if not self._epochs:
                raise AttributeError(
                    f"the history is empty (no epoch was run), so metric {name!r} cannot "
                    "be accessed"
                )
            raise AttributeError(f"History has no metric {name!r}; available metrics: {self.keys}")
        return self._values(name)

    def _values(self, name: str) -> list[Any]:
        values = [epoch[name] for epoch in self._epochs if name in epoch]
        if name == "micro_train_loss":
            return [loss for batch_losses in values for loss in batch_losses]
        return values

    def __repr__(self) -> str:
        return f"History(epochs={len(self)}, keys={self.keys}, duration={self.duration:.2f}s)"

    @property
    def keys(self) -> list[str]:
        """The sorted names of all metrics recorded in any epoch (private ones excluded)."""
        names = {k for epoch in self._epochs for k in epoch if not k.startswith("_")}
        return sorted(names)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """A copy of the per-epoch entries."""
        return [dict(entry) for entry in self._epochs]

    def to_dict(self) -> dict[str, list[Any]]:
        """Return every metric as ``{key: values}``, as the attributes give them.

        Returns:
            The metrics, ``micro_train_loss`` flattened to one value per batch.
        """
        return {name: self._values(name) for name in self.keys}

    def save(self, file: str | os.PathLike[str]) -> None:
        """Write the history to a JSON file (parent folders are created).

        Args:
            file: the path of the file.
        """
        path = pathlib.Path(file)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"duration": self.duration, "metrics": self._epochs}
        path.write_text(json.dumps(payload, indent=4, sort_keys=True), encoding="utf-8")

    @staticmethod
    def load(file: str | os.PathLike[str]) -> History:
        """Read a history written by :py:meth:`save`.

        Args:
            file: the path of the file.

        Returns:
            The history.
        """
        payload = json.loads(pathlib.Path(file).read_text(encoding="utf-8"))
        return History(payload["duration"], payload["metrics"])

    @staticmethod
    def cat(*histories: History) -> History:
        """Join the histories of consecutive runs: durations add up, epochs are appended.

        Args:
            *histories: the histories, in order.

        Returns:
            The joined history.
        """
        duration = sum(h.duration for h in histories)
        return History(duration, [entry for h in histories for entry in h._epochs])


__all__ = ["Evaluation", "History"]
