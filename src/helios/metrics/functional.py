"""Image-quality and classification metrics as plain functions.

Two families are provided:

* numpy functions (``calculate_psnr``, ``calculate_ssim``, ``calculate_mae``) take one image
  (``HWC`` or ``CHW``, or a 2-D ``HW`` image) with values in ``[0, 255]``, colour images in
  BGR order;
* torch functions (``calculate_psnr_torch``, ``calculate_ssim_torch``,
  ``calculate_mae_torch``) take a batch ``(N, C, H, W)`` (a single ``(C, H, W)`` image is
  treated as a batch of one) with values in ``[0, 1]``, colour images in RGB order. They
  compute on the input's device and return the mean of the per-image values over the
  batch.

All of them return Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812

from helios.data.functional import convert_to_hwc, rgb2ycbcr_torch, to_y_channel

_Array = TypeVar("_Array", npt.NDArray, torch.Tensor)

_SSIM_WINDOW_SIZE = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03
_INPUT_ORDERS = ("HWC", "CHW")


def _check_crop_border(crop_border: int) -> None:
    if isinstance(crop_border, bool) or not isinstance(crop_border, int) or crop_border < 0:
        raise ValueError(f"crop_border must be a non-negative int, got crop_border={crop_border!r}")


def _check_input_order(input_order: str) -> None:
    if input_order not in _INPUT_ORDERS:
        raise ValueError(
            f"input_order must be one of {_INPUT_ORDERS}, got input_order={input_order!r}"
        )


def _check_scale(scale: float) -> None:
    if not scale > 0:
        raise ValueError(f"scale must be positive, got scale={scale!r}")


def _check_same_shape(shape: tuple[int, ...], shape2: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(shape2):
        raise ValueError(f"image shapes are different: {tuple(shape)} and {tuple(shape2)}")


def _check_cropped_size(height: int, width: int, crop_border: int, min_size: int) -> None:
    if height < min_size or width < min_size:
        raise ValueError(
            f"the images are {max(height, 0)}x{max(width, 0)} after cropping "
            f"crop_border={crop_border} pixels from each edge; at least "
            f"{min_size}x{min_size} is needed"
        )


def _gaussian_kernel_1d() -> npt.NDArray[np.float64]:
    # Same normalised kernel as cv2.getGaussianKernel(11, 1.5); its outer product with
    # itself is the 11x11 SSIM window.
    radius = _SSIM_WINDOW_SIZE // 2
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return kernel / kernel.sum()


def _ssim_map(img: _Array, img2: _Array, filter_valid: Callable[[_Array], _Array]) -> _Array:
    """SSIM of every valid window, for images in [0, 255] (numpy arrays or tensors)."""
    c1 = (_SSIM_K1 * 255) ** 2
    c2 = (_SSIM_K2 * 255) ** 2
    mu1, mu2 = filter_valid(img), filter_valid(img2)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = filter_valid(img**2) - mu1_sq
    sigma2_sq = filter_valid(img2**2) - mu2_sq
    sigma12 = filter_valid(img * img2) - mu1_mu2
    return ((2 * mu1_mu2 + c1) * (2 * sigma12 + c2)) / (
        (mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2)
    )


def _float_dtype(tensor: torch.Tensor) -> torch.dtype:
    # MPS has no float64 support.
    return torch.float32 if tensor.device.type == "mps" else torch.float64


# ---------------------------------------------------------------------------------------
# numpy
# ---------------------------------------------------------------------------------------


def _prepare_numpy(
    img: npt.NDArray,
    img2: npt.NDArray,
    crop_border: int,
    input_order: str,
    test_y_channel: bool,
    min_size: int,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    _check_same_shape(img.shape, img2.shape)
    _check_crop_border(crop_border)
    img = convert_to_hwc(img, input_order)
    img2 = convert_to_hwc(img2, input_order)

    height, width = img.shape[0] - 2 * crop_border, img.shape[1] - 2 * crop_border
    _check_cropped_size(height, width, crop_border, min_size)
    if crop_border != 0:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]

    if test_y_channel:
        img = to_y_channel(img)
        img2 = to_y_channel(img2)
    return img.astype(np.float64), img2.astype(np.float64)


def calculate_psnr(
    img: npt.NDArray,
    img2: npt.NDArray,
    crop_border: int,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """Compute the PSNR (peak signal-to-noise ratio) of two images.

    Args:
        img: an image with values in ``[0, 255]``.
        img2: the other image, same shape.
        crop_border: number of pixels cropped from each edge before the computation.
        input_order: ``"HWC"`` or ``"CHW"`` (ignored for 2-D images).
        test_y_channel: compute the metric on the Y channel of YCbCr. 3-channel images are
            taken as BGR (OpenCV order); other images are used as they are.

    Returns:
        The PSNR in dB (``inf`` for identical images).

    Raises:
        ValueError: if the shapes differ, an argument is invalid, or nothing is left after
            cropping.
    """
    img, img2 = _prepare_numpy(img, img2, crop_border, input_order, test_y_channel, 1)
    mse = float(np.mean((img - img2) ** 2))
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(255.0 * 255.0 / mse)


def _filter_valid_numpy(
    img: npt.NDArray[np.float64], kernel: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    # Separable "valid" correlation of an HxWxC image: no padding, so the result is
    # (H - k + 1) x (W - k + 1) x C.
    size = kernel.size
    rows = np.lib.stride_tricks.sliding_window_view(img, size, axis=0) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, size, axis=1) @ kernel


def calculate_ssim(
    img: npt.NDArray,
    img2: npt.NDArray,
    crop_border: int,
    input_order: str = "HWC",
    test_y_channel: bool = False,
) -> float:
    """Compute the SSIM (structural similarity) of two images.

    The local statistics use an 11x11 Gaussian window with sigma 1.5, applied only where it
    fits entirely inside the (cropped) image, and the constants ``C1 = (0.01 * 255)^2``,
    ``C2 = (0.03 * 255)^2``. The result is the mean of the SSIM map over all pixels and
    channels.

    Args:
        img: an image with values in ``[0, 255]``.
        img2: the other image, same shape.
        crop_border: number of pixels cropped from each edge before the computation.
        input_order: ``"HWC"`` or ``"CHW"`` (ignored for 2-D images).
        test_y_channel: compute the metric on the Y channel of YCbCr. 3-channel images are
            taken as BGR (OpenCV order); other images are used as they are.

    Returns:
        The SSIM, at most 1.

    Raises:
        ValueError: if the shapes differ, an argument is invalid, or the cropped images are
            smaller than the 11x11 window.
    """
    img, img2 = _prepare_numpy(
        img, img2, crop_border, input_order, test_y_channel, _SSIM_WINDOW_SIZE
    )
    kernel = _gaussian_kernel_1d()
    ssim_map = _ssim_map(img, img2, lambda x: _filter_valid_numpy(x, kernel))
    return float(ssim_map.mean())


def calculate_mae(pred: npt.NDArray, gt: npt.NDArray, scale: float = 1.0) -> float:
    """Compute the mean absolute error, divided by ``scale``.

    Args:
        pred: the prediction.
        gt: the ground truth, same shape.
        scale: the value the mean is divided by (e.g. the data range).

    Returns:
        ``mean(|pred - gt|) / scale``.

    Raises:
        ValueError: if the shapes differ, the arrays are empty or ``scale`` is not positive.
    """
    _check_same_shape(pred.shape, gt.shape)
    _check_scale(scale)
    if gt.size == 0:
        raise ValueError("cannot compute the MAE of empty arrays")
    diff = np.abs(pred.astype(np.float64) - gt.astype(np.float64))
    return float(diff.sum() / (gt.size * scale))


def _average_precision(scores: npt.NDArray, positives: npt.NDArray[np.bool_]) -> float:
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    true_pos = np.cumsum(positives)
    # Tied scores form one threshold: only the last position of each run of equal scores
    # is a cut-off, so the result does not depend on how ties are ordered.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    tp_at_cut = true_pos[last_of_run]
    count_at_cut = np.flatnonzero(last_of_run) + 1
    new_positives = np.diff(np.r_[0, tp_at_cut])
    return float(np.sum(new_positives * tp_at_cut / count_at_cut) / true_pos[-1])


def calculate_mAP(targs: npt.NDArray, preds: npt.NDArray) -> float:  # noqa: N802
    """Compute the mean average precision (mAP) of multi-label predictions.

    ``targs`` and ``preds`` are ``(N, K)`` arrays: ``N`` samples, ``K`` classes, targets
    equal to 1 for positives. The average precision of each class that has at least one
    positive is computed (precision averaged over the ranks of the positives, tied scores
    treated as one threshold, the same definition as scikit-learn's
    ``average_precision_score``). Classes without positives are skipped.

    Args:
        targs: the targets.
        preds: the prediction scores.

    Returns:
        100 times the mean average precision over the classes with positives. It is 0 when
        ``preds`` is empty or no class has a positive.

    Raises:
        ValueError: if the shapes differ or are not 2-D.
    """
    _check_same_shape(targs.shape, preds.shape)
    if preds.size == 0:
        return 0.0
    if preds.ndim != 2:
        raise ValueError(f"expected (samples, classes) arrays, got arrays of shape {preds.shape}")
    positives = targs == 1
    preds = preds.astype(np.float64)
    ap = [
        _average_precision(preds[:, k], positives[:, k])
        for k in range(preds.shape[1])
        if positives[:, k].any()
    ]
    if not ap:
        return 0.0
    return 100.0 * float(np.mean(ap))


# ---------------------------------------------------------------------------------------
# torch
# ---------------------------------------------------------------------------------------


def _prepare_torch(
    img: torch.Tensor,
    img2: torch.Tensor,
    crop_border: int,
    test_y_channel: bool,
    min_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_same_shape(img.shape, img2.shape)
    _check_crop_border(crop_border)
    if img.ndim == 3:
        img, img2 = img.unsqueeze(0), img2.unsqueeze(0)
    elif img.ndim != 4:
        raise ValueError(
            f"expected an (N, C, H, W) or (C, H, W) tensor, got shape {tuple(img.shape)}"
        )

    height, width = img.shape[2] - 2 * crop_border, img.shape[3] - 2 * crop_border
    _check_cropped_size(height, width, crop_border, min_size)
    if crop_border != 0:
        img = img[:, :, crop_border:-crop_border, crop_border:-crop_border]
        img2 = img2[:, :, crop_border:-crop_border, crop_border:-crop_border]

    dtype = _float_dtype(img)
    img, img2 = img.to(dtype), img2.to(dtype)
    if test_y_channel:
        img = rgb2ycbcr_torch(img, only_y=True)
        img2 = rgb2ycbcr_torch(img2, only_y=True)
    return img, img2


@torch.no_grad()
def calculate_psnr_torch(
    img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False
) -> float:
    """Compute the PSNR (peak signal-to-noise ratio) of a batch of images.

    Unlike :py:func:`calculate_psnr`, the data is expected in ``[0, 1]`` (peak value 1).

    Args:
        img: images ``(N, C, H, W)`` (or one ``(C, H, W)`` image) with values in ``[0, 1]``.
        img2: the other images, same shape.
        crop_border: number of pixels cropped from each edge before the computation.
        test_y_channel: compute the metric on the Y channel of YCbCr (the images must be
            RGB).

    Returns:
        The mean over the batch of the per-image PSNR in dB (``inf`` if any pair of images
        is identical).

    Raises:
        ValueError: if the shapes differ, an argument is invalid, or nothing is left after
            cropping.
    """
    img, img2 = _prepare_torch(img, img2, crop_border, test_y_channel, 1)
    mse = torch.mean((img - img2) ** 2, dim=[1, 2, 3])
    return float(torch.mean(10.0 * torch.log10(1.0 / mse)).item())


def _filter_valid_torch(img: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    # Depthwise separable "valid" correlation of an NCHW batch.
    channels, size = img.shape[1], kernel.numel()
    vertical = kernel.view(1, 1, size, 1).expand(channels, 1, size, 1)
    horizontal = kernel.view(1, 1, 1, size).expand(channels, 1, 1, size)
    out = F.conv2d(img, vertical, groups=channels)
    return F.conv2d(out, horizontal, groups=channels)


@torch.no_grad()
def calculate_ssim_torch(
    img: torch.Tensor, img2: torch.Tensor, crop_border: int, test_y_channel: bool = False
) -> float:
    """Compute the SSIM (structural similarity) of a batch of images.

    The data is expected in ``[0, 1]``; it is scaled to ``[0, 255]`` so that the result
    equals :py:func:`calculate_ssim` on the same images.

    Args:
        img: images ``(N, C, H, W)`` (or one ``(C, H, W)`` image) with values in ``[0, 1]``.
        img2: the other images, same shape.
        crop_border: number of pixels cropped from each edge before the computation.
        test_y_channel: compute the metric on the Y channel of YCbCr (the images must be
            RGB).

    Returns:
        The mean over the batch of the per-image SSIM.

    Raises:
        ValueError: if the shapes differ, an argument is invalid, or the cropped images are
            smaller than the 11x11 window.
    """
    img, img2 = _prepare_torch(img, img2, crop_border, test_y_channel, _SSIM_WINDOW_SIZE)
    img, img2 = img * 255.0, img2 * 255.0
    kernel = torch.from_numpy(_gaussian_kernel_1d()).to(device=img.device, dtype=img.dtype)
    ssim_map = _ssim_map(img, img2, lambda x: _filter_valid_torch(x, kernel))
    return float(ssim_map.mean(dim=[1, 2, 3]).mean().item())


@torch.no_grad()
def calculate_mae_torch(pred: torch.Tensor, gt: torch.Tensor, scale: float = 1.0) -> float:
    """Compute the mean absolute error, divided by ``scale``.

    Every element counts equally, so for a batch of equally sized images this is also the
    mean over the batch of the per-image values.

    Args:
        pred: the prediction.
        gt: the ground truth, same shape.
        scale: the value the mean is divided by (e.g. the data range).

    Returns:
        ``mean(|pred - gt|) / scale``.

    Raises:
        ValueError: if the shapes differ, the tensors are empty or ``scale`` is not
            positive.
    """
    _check_same_shape(pred.shape, gt.shape)
    _check_scale(scale)
    if gt.numel() == 0:
        raise ValueError("cannot compute the MAE of empty tensors")
    dtype = _float_dtype(gt)
    diff = torch.abs(pred.to(dtype) - gt.to(dtype))
    return float((diff.sum() / (gt.numel() * scale)).item())
