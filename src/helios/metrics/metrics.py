"""Metric modules and the metrics registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

import helios.metrics.functional as F  # noqa: N812
from helios.core.utils import Registry

METRICS_REGISTRY = Registry("metrics")
"""Registry of metrics, pre-filled with the metric modules of this module."""


def create_metric(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Create a metric registered in :py:data:`METRICS_REGISTRY`."""
    return METRICS_REGISTRY.create(type_name, *args, **kwargs)


def _input_type_error(a: object, b: object) -> TypeError:
    return TypeError(
        "expected two torch.Tensor or two numpy.ndarray inputs, got "
        f"{type(a).__name__} and {type(b).__name__}"
    )


class _ImageMetric(nn.Module):
    """A metric of two images or two batches of images, on tensors or on ndarrays.

    Two tensors (``(N, C, H, W)`` in ``[0, 1]``, ``input_order`` ignored) go to the
    metric's torch function; two ndarrays (one image in ``[0, 255]``) to its NumPy one.

    Args:
        crop_border: number of pixels cropped from each edge before the computation.
        input_order: ``"HWC"`` or ``"CHW"``, the layout of ndarray inputs.
        test_y_channel: compute the metric on the Y channel of YCbCr (colour ndarrays are
            taken as BGR, colour tensors as RGB).

    Raises:
        ValueError: if ``crop_border`` is negative or ``input_order`` is unknown.
    """

    # The metric's torch and NumPy functions.
    _functions: ClassVar[
        tuple[
            Callable[[torch.Tensor, torch.Tensor, int, bool], float],
            Callable[[npt.NDArray, npt.NDArray, int, str, bool], float],
        ]
    ]

    def __init__(
        self, crop_border: int, input_order: str = "HWC", test_y_channel: bool = False
    ) -> None:
        super().__init__()
        F._check_crop_border(crop_border)
        F._check_input_order(input_order)
        self._crop_border = crop_border
        self._input_order = input_order
        self._test_y_channel = test_y_channel

    def extra_repr(self) -> str:
        return (
            f"crop_border={self._crop_border}, input_order={self._input_order!r}, "
            f"test_y_channel={self._test_y_channel}"
        )

    def forward(self, img: npt.NDArray | torch.Tensor, img2: npt.NDArray | torch.Tensor) -> float:
        """Compute the metric.

        Args:
            img: the image(s).
            img2: the other image(s), same type and shape.

        Returns:
            The value (the batch mean for tensors).

        Raises:
            TypeError: if the inputs are not both tensors or both ndarrays.
        """
        torch_fn, numpy_fn = self._functions
        if isinstance(img, torch.Tensor) and isinstance(img2, torch.Tensor):
            return torch_fn(img, img2, self._crop_border, self._test_y_channel)
        if isinstance(img, np.ndarray) and isinstance(img2, np.ndarray):
            return numpy_fn(img, img2, self._crop_border, self._input_order, self._test_y_channel)
        raise _input_type_error(img, img2)


@METRICS_REGISTRY.register
class CalculatePSNR(_ImageMetric):
    """PSNR (peak signal-to-noise ratio), in dB, of two images or two batches of images.

    Two tensors use :py:func:`~helios.metrics.functional.calculate_psnr_torch`, two
    ndarrays :py:func:`~helios.metrics.functional.calculate_psnr`; arguments: see the base
    class. Identical images give ``inf``; every ten dB more is ten times less squared
    error.
    """

    _functions = (F.calculate_psnr_torch, F.calculate_psnr)


@METRICS_REGISTRY.register
class CalculateSSIM(_ImageMetric):
    """SSIM (structural similarity) of two images or two batches of images.

    Two tensors use :py:func:`~helios.metrics.functional.calculate_ssim_torch`, two
    ndarrays :py:func:`~helios.metrics.functional.calculate_ssim` (arguments: see the base
    class).
    """

    _functions = (F.calculate_ssim_torch, F.calculate_ssim)


@METRICS_REGISTRY.register
class CalculateMAP(nn.Module):
    """Mean average precision of multi-label predictions.

    See :py:func:`~helios.metrics.functional.calculate_mAP`. Tensors are copied to the CPU
    and converted to ndarrays.
    """

    def forward(
        self, targs: npt.NDArray | torch.Tensor, preds: npt.NDArray | torch.Tensor
    ) -> float:
        """Compute the mAP.

        Args:
            targs: ``(N, K)`` targets, 1 for positives.
            preds: ``(N, K)`` prediction scores.

        Returns:
            The mAP, in ``[0, 100]``.

        Raises:
            TypeError: if the inputs are not both tensors or both ndarrays.
        """
        if isinstance(targs, torch.Tensor) and isinstance(preds, torch.Tensor):
            return F.calculate_mAP(targs.detach().cpu().numpy(), preds.detach().cpu().numpy())
        if isinstance(targs, np.ndarray) and isinstance(preds, np.ndarray):
            return F.calculate_mAP(targs, preds)
        raise _input_type_error(targs, preds)


@METRICS_REGISTRY.register
class CalculateMAE(nn.Module):
    """Mean absolute error, divided by a scale.

    Two tensors use :py:func:`~helios.metrics.functional.calculate_mae_torch`; two ndarrays
    use :py:func:`~helios.metrics.functional.calculate_mae`.

    Args:
        scale: the value the mean is divided by (e.g. the data range).

    Raises:
        ValueError: if ``scale`` is not positive.
    """

    def __init__(self, scale: float = 1) -> None:
        super().__init__()
        F._check_scale(scale)
        self._scale = scale

    def forward(self, pred: npt.NDArray | torch.Tensor, gt: npt.NDArray | torch.Tensor) -> float:
        """Compute the MAE.

        Args:
            pred: the prediction.
            gt: the ground truth, same type and shape.

        Returns:
            The scaled MAE.

        Raises:
            TypeError: if the inputs are not both tensors or both ndarrays.
        """
        if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor):
            return F.calculate_mae_torch(pred, gt, self._scale)
        if isinstance(pred, np.ndarray) and isinstance(gt, np.ndarray):
            return F.calculate_mae(pred, gt, self._scale)
        raise _input_type_error(pred, gt)

    def extra_repr(self) -> str:
        """Return the scale for the module's ``repr``."""
        return f"scale={self._scale}"
