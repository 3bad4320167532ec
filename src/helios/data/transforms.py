"""Image transforms that work without torchvision."""

from __future__ import annotations

from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import PIL.Image
import torch
from torch import nn

from helios.core.utils import Registry

TRANSFORM_REGISTRY = Registry("transform")
"""Registry of transforms, used by :py:func:`create_transform`."""

ImageLike: TypeAlias = npt.NDArray[Any] | PIL.Image.Image | torch.Tensor
"""An image accepted by :py:class:`ToImageTensor`."""


def create_transform(type_name: str, *args: Any, **kwargs: Any) -> nn.Module:
    """Create a transform registered in :py:data:`TRANSFORM_REGISTRY`."""
    return TRANSFORM_REGISTRY.create(type_name, *args, **kwargs)


_VALUE_BITS = {
    torch.bool: 1,
    torch.uint8: 8,
    torch.int8: 7,
    torch.int16: 15,
    torch.uint16: 16,
    torch.int32: 31,
    torch.uint32: 32,
    torch.int64: 63,
    torch.uint64: 64,
}


def _max_value(dtype: torch.dtype) -> int:
    return 2 ** _VALUE_BITS[dtype] - 1


def _to_dtype(x: torch.Tensor, dtype: torch.dtype, scale: bool) -> torch.Tensor:
    if x.dtype == dtype:
        return x
    if not scale or x.dtype == torch.bool:
        return x.to(dtype)
    if x.dtype.is_floating_point:
        if dtype.is_floating_point:
            return x.to(dtype)
        # Float in [0, 1] to integer range; the offset keeps 1.0 at the maximum value.
        return x.mul(_max_value(dtype) + 1.0 - 1e-3).to(dtype)
    if dtype.is_floating_point:
        return x.to(dtype).div_(_max_value(x.dtype))
    if dtype == torch.bool:
        return x.to(dtype)
    shift = _VALUE_BITS[x.dtype] - _VALUE_BITS[dtype]
    wide = x.to(torch.int64)
    wide = wide >> shift if shift > 0 else wide << -shift
    return wide.to(dtype)


def _array_to_tensor(array: npt.NDArray[Any]) -> torch.Tensor:
    if array.ndim not in (2, 3, 4):
        raise ValueError(
            "expected img to be an HW, HWC or NHWC array, but received an array "
            f"with shape {array.shape}"
        )
    if array.ndim == 2:
        array = array[:, :, None]
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    # Copying gives torch a writable array and decouples the tensor from the input.
    tensor = torch.from_numpy(np.array(array, copy=True))
    if tensor.ndim == 3:
        return tensor.permute(2, 0, 1).contiguous()
    return tensor.permute(0, 3, 1, 2).contiguous()


def _pil_to_array(image: PIL.Image.Image) -> npt.NDArray[Any]:
    if image.mode == "1":
        image = image.convert("L")
    return np.asarray(image)


@TRANSFORM_REGISTRY.register
class ToImageTensor(nn.Module):
    """Convert images to ``CHW`` tensors of a given dtype (no torchvision needed).

    Accepted images:

    * NumPy arrays: ``HW`` (grayscale, one channel is added), ``HWC``, or a 4-D ``NHWC``
      batch, which becomes ``NCHW``.
    * PIL images of any mode (``L``, ``RGB``, ``RGBA``, ``I;16``, ``I``, ``F``, ...).
    * Tensors, taken to be ``CHW`` already (``HW`` gets a channel axis); only the dtype is
      converted.
    * A list or tuple of the above.

    With ``scale=True`` and a floating ``dtype``, integer inputs are mapped to ``[0, 1]``
    (``uint8`` / 255, ``uint16`` / 65535, ...); floating inputs are not rescaled. This
    matches torchvision's ``ToImage`` + ``ToDtype(dtype, scale=scale)`` + ``ToPureTensor``.

    A single image (or a list/tuple holding one) gives a single tensor; otherwise a tuple
    gives a tuple and a list gives a list.

    It composes with any callable pipeline, for example without ``Compose``::

        to_tensor = ToImageTensor()

        def transform(image):
            return (to_tensor(image) - 0.5) / 0.5

    Args:
        dtype: the dtype of the output tensors.
        scale: rescale values when converting between integer and floating dtypes.

    Raises:
        TypeError: if ``dtype`` is not a ``torch.dtype`` or ``scale`` is not a bool.
    """

    def __init__(self, dtype: torch.dtype = torch.float32, scale: bool = True) -> None:
        super().__init__()
        if not isinstance(dtype, torch.dtype):
            raise TypeError(f"expected dtype to be a torch.dtype, but received {dtype!r}")
        if not isinstance(scale, bool):
            raise TypeError(f"expected scale to be a bool, but received {scale!r}")
        self._dtype = dtype
        self._scale = scale

    def _convert(self, img: object) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            if img.ndim < 2:
                raise ValueError(
                    "expected img to be a CHW or HW tensor, but received a tensor "
                    f"with shape {tuple(img.shape)}"
                )
            tensor = img.unsqueeze(0) if img.ndim == 2 else img
        elif isinstance(img, PIL.Image.Image):
            tensor = _array_to_tensor(_pil_to_array(img))
        elif isinstance(img, np.ndarray):
            tensor = _array_to_tensor(img)
        else:
            raise TypeError(
                "expected img to be a numpy array, a PIL image, a tensor or a "
                f"list/tuple of them, but received {type(img).__name__}"
            )
        return _to_dtype(tensor, self._dtype, self._scale)

    def forward(
        self, img: ImageLike | list[ImageLike] | tuple[ImageLike, ...]
    ) -> torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...]:
        """Convert one image or a list/tuple of images.

        Args:
            img: the image(s).

        Returns:
            A tensor for a single image, otherwise a list or tuple of tensors (matching the
            input).

        Raises:
            TypeError: if an element is not an array, PIL image or tensor.
            ValueError: if an element has an unsupported number of dimensions.
        """
        if isinstance(img, list | tuple):
            outputs = [self._convert(element) for element in img]
            if len(outputs) == 1:
                return outputs[0]
            return tuple(outputs) if isinstance(img, tuple) else outputs
        return self._convert(img)

    def extra_repr(self) -> str:
        """Return the settings shown by ``repr``."""
        return f"dtype={self._dtype}, scale={self._scale}"
