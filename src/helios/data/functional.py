"""Image helpers built on Pillow and NumPy: loading, tensor conversion, colour spaces."""

from __future__ import annotations

import os
import pathlib
import zlib
from typing import Any

import numpy as np
import numpy.typing as npt
import PIL.Image
import torch

_BGR_TO_Y = np.array([24.966, 128.553, 65.481])
# BT.601 with rows in B, G, R order; columns give Y, Cb, Cr.
_BGR_TO_YCBCR = np.array(
    [
        [24.966, 112.0, -18.214],
        [128.553, -74.203, -93.786],
        [65.481, -37.797, 112.0],
    ]
)
_YCBCR_BIAS = np.array([16.0, 128.0, 128.0])


IMREAD_UNCHANGED = -1
"""``load_image`` flag (OpenCV's value): keep channels (alpha too) and bit depth."""
IMREAD_GRAYSCALE = 0
"""``load_image`` flag (OpenCV's value): one 8-bit channel."""
IMREAD_COLOR = 1
"""``load_image`` flag (OpenCV's value): three 8-bit channels, alpha dropped."""
IMREAD_ANYDEPTH = 2
"""``load_image`` flag (OpenCV's value): keep 16-bit and float data instead of 8 bits."""
IMREAD_ANYCOLOR = 4
"""``load_image`` flag (OpenCV's value): keep gray images gray, colour images colour."""

_KNOWN_FLAG_BITS = IMREAD_COLOR | IMREAD_ANYDEPTH | IMREAD_ANYCOLOR


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# (x start, y start, x step, y step) of the seven passes of an Adam7-interlaced PNG.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
          (0, 1, 1, 2))  # fmt: skip
# Channels of the 16-bit PNG colour types Pillow reduces to 8 bits: RGB, gray+alpha, RGBA.
_PNG_16_BIT_CHANNELS = {2: 3, 4: 2, 6: 4}


def _png_16_bit_header(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """``(width, height, colour type, interlace)`` of a 16-bit colour or gray+alpha PNG."""
    with open(path, "rb") as file:
        head = file.read(33)
    if len(head) < 33 or not head.startswith(_PNG_SIGNATURE) or head[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    depth, colour, interlace = head[24], head[25], head[28]
    if depth != 16 or colour not in _PNG_16_BIT_CHANNELS:
        return None
    return width, height, colour, interlace


def _unfilter(rows: bytes, width: int, height: int, bpp: int) -> npt.NDArray[np.uint8]:
    """Undo the per-row PNG filters of an image of ``height`` rows of ``width`` pixels."""
    stride = width * bpp
    out = np.zeros((height, stride), dtype=np.uint8)
    prior = np.zeros(stride, dtype=np.uint8)
    for y in range(height):
        start = y * (stride + 1)
        kind = rows[start]
        line = np.frombuffer(rows, dtype=np.uint8, count=stride, offset=start + 1)
        if kind == 0:
            row = line.copy()
        elif kind == 1:  # Sub: a running sum per byte lane, modulo 256
            row = np.cumsum(line.reshape(width, bpp), axis=0, dtype=np.uint8).reshape(stride)
        elif kind == 2:  # Up
            row = line + prior
        elif kind in (3, 4):  # Average, Paeth: each byte depends on the one decoded before
            row = np.frombuffer(_unfilter_sequential(kind, line, prior, bpp), dtype=np.uint8)
        else:
            raise ValueError(f"corrupt PNG: unknown filter type {kind} in row {y}")
        out[y] = row
        prior = row
    return out


def _unfilter_sequential(
    kind: int, line: npt.NDArray[np.uint8], prior: npt.NDArray[np.uint8], bpp: int
) -> bytearray:
    filtered, above = line.tobytes(), prior.tobytes()
    row = bytearray(len(filtered))
    for i, value in enumerate(filtered):
        left = row[i - bpp] if i >= bpp else 0
        up = above[i]
        if kind == 3:
            row[i] = (value + ((left + up) >> 1)) & 0xFF
            continue
        corner = above[i - bpp] if i >= bpp else 0
        estimate = left + up - corner
        pa, pb, pc = abs(estimate - left), abs(estimate - up), abs(estimate - corner)
        predictor = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
        row[i] = (value + predictor) & 0xFF
    return row


def _read_png_16_bit(
    path: str | os.PathLike[str], header: tuple[int, int, int, int]
) -> npt.NDArray[np.uint16]:
    """Decode a 16-bit colour (or gray+alpha) PNG, which Pillow reads as 8-bit only.

    Returns:
        ``HxWx3`` (RGB) or ``HxWx4`` (RGBA; gray+alpha is expanded) ``uint16`` values.
    """
    width, height, colour, interlace = header
    channels = _PNG_16_BIT_CHANNELS[colour]
    bpp = 2 * channels
    data = pathlib.Path(path).read_bytes()
    compressed = bytearray()
    offset = len(_PNG_SIGNATURE)
    while offset + 8 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        kind = data[offset + 4 : offset + 8]
        if kind == b"IDAT":
            compressed += data[offset + 8 : offset + 8 + length]
        elif kind == b"IEND":
            break
        offset += 12 + length
    raw = zlib.decompress(bytes(compressed))
    image = np.zeros((height, width * bpp), dtype=np.uint8)
    passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
    position = 0
    for x0, y0, dx, dy in passes:
        pass_width, pass_height = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_width <= 0 or pass_height <= 0:
            continue
        size = pass_height * (pass_width * bpp + 1)
        pixels = _unfilter(raw[position : position + size], pass_width, pass_height, bpp)
        position += size
        target = image.reshape(height, width, bpp)
        target[y0::dy, x0::dx] = pixels.reshape(pass_height, pass_width, bpp)
    values = image.view(">u2").astype(np.uint16).reshape(height, width, channels)
    if channels == 2:  # gray + alpha: expanded to RGBA, as OpenCV does
        values = np.concatenate([np.repeat(values[:, :, :1], 3, axis=2), values[:, :, 1:]], 2)
    return values


def _read_unchanged(path: str | os.PathLike[str]) -> npt.NDArray[Any]:
    """Read an image with its own channels (RGB(A) order) and bit depth."""
    header = _png_16_bit_header(path)
    if header is not None:
        return _read_png_16_bit(path, header)
    with PIL.Image.open(path) as file:
        image: PIL.Image.Image = file
        mode = image.mode
        if mode == "1":
            image = image.convert("L")
        elif mode in ("P", "PA", "LA"):
            has_alpha = mode != "P" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
        elif mode not in ("L", "RGB", "RGBA", "I", "F") and not mode.startswith("I;16"):
            image = image.convert("RGB")
        array = np.asarray(image)
        # PNG has no 32-bit integer gray, so an "I" PNG is a 16-bit one.
        if mode == "I" and file.format == "PNG":
            array = array.astype(np.uint16)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return array


def _to_8_bit(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Reduce the depth to 8 bits as OpenCV does (16-bit values are shifted right by 8)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.uint16:
        return (array >> 8).astype(np.uint8)
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def _gray(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Convert an RGB(A) array to one channel with the BT.601 weights OpenCV uses."""
    if array.ndim == 2:
        return array
    rgb = array[:, :, :3].astype(np.float64)
    luma = rgb @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(array.dtype, np.integer):
        return np.rint(luma).astype(array.dtype)
    return luma.astype(array.dtype)


def load_image(
    path: str | os.PathLike[str], flags: int = IMREAD_COLOR, as_rgb: bool = True
) -> npt.NDArray[Any]:
    """Load an image into an array, reading it with Pillow and OpenCV's ``imread`` flags.

    The flags have OpenCV's values (``cv2.IMREAD_*`` can be passed directly; OpenCV is not
    needed) and their meaning:

    * :py:data:`IMREAD_COLOR` (default): ``HxWx3`` ``uint8``. Gray images are replicated to
      three channels, alpha is dropped, 16-bit data is reduced to 8 bits (``value >> 8``).
    * :py:data:`IMREAD_GRAYSCALE`: ``HxW`` ``uint8``; colour images are converted with
      ``Y = 0.299 R + 0.587 G + 0.114 B``.
    * :py:data:`IMREAD_UNCHANGED`: the file's channels (gray ``HxW``, colour ``HxWx3``,
      with alpha ``HxWx4``; palette images are expanded) and bit depth (``uint16`` stays
      ``uint16``, 32-bit float stays ``float32``).
    * :py:data:`IMREAD_ANYDEPTH` (with ``COLOR`` or ``GRAYSCALE``) keeps the bit depth;
      :py:data:`IMREAD_ANYCOLOR` keeps gray images gray and colour images colour (no alpha).

    Args:
        path: the image file.
        flags: an OpenCV ``imread`` flag (see above).
        as_rgb: channels in RGB(A) order; ``False`` gives BGR(A), the order OpenCV returns
            (and :py:func:`bgr2ycbcr` / :py:func:`to_y_channel` expect). 2-D images are
            returned as they are.

    Returns:
        The image.

    Raises:
        TypeError: if ``flags`` is not an int.
        ValueError: if ``flags`` is not one of the supported flag combinations.
        FileNotFoundError: if ``path`` does not exist.
        PIL.UnidentifiedImageError: if the file is not an image Pillow can read.
    """
    if isinstance(flags, bool) or not isinstance(flags, int):
        raise TypeError(f"flags must be an int (an imread flag), got {flags!r}")
    if flags != IMREAD_UNCHANGED and (flags < 0 or flags & ~_KNOWN_FLAG_BITS):
        raise ValueError(
            f"unsupported flags={flags}; expected IMREAD_UNCHANGED (-1), "
            "IMREAD_GRAYSCALE (0), IMREAD_COLOR (1), optionally combined with "
            "IMREAD_ANYDEPTH (2) or IMREAD_ANYCOLOR (4)"
        )
    array = _read_unchanged(path)
    if flags != IMREAD_UNCHANGED:
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[:, :, :3]
        if flags & IMREAD_ANYCOLOR:
            pass
        elif flags & IMREAD_COLOR:
            if array.ndim == 2:
                array = np.repeat(array[:, :, None], 3, axis=2)
        else:
            array = _gray(array)
        if not flags & IMREAD_ANYDEPTH:
            array = _to_8_bit(array)
    if array.ndim == 3 and not as_rgb:
        channels = array.shape[2]
        if channels not in (3, 4):
            raise RuntimeError(f"expected a 3 or 4 channel image but received {channels} channels")
        order = [2, 1, 0] if channels == 3 else [2, 1, 0, 3]
        array = array[:, :, order]
    return np.ascontiguousarray(array)


def load_image_pil(
    path: str | os.PathLike[str], out_fmt: str = "", as_numpy: bool = True
) -> npt.NDArray[Any] | PIL.Image.Image:
    """Load an image with Pillow, converted to a given mode.

    Args:
        path: the image file.
        out_fmt: the Pillow mode to convert to (``""`` means ``"RGB"``).
        as_numpy: return an array instead of the PIL image.

    Returns:
        The converted image, as an array or a PIL image.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        PIL.UnidentifiedImageError: if the file is not an image Pillow can read.
        ValueError: if ``out_fmt`` is not a mode Pillow can convert to.
    """
    with PIL.Image.open(path) as image:
        converted = image.convert(out_fmt if out_fmt else "RGB")
    return np.array(converted) if as_numpy else converted


def tensor_to_numpy(
    x: torch.Tensor,
    squeeze: bool = True,
    clamp: tuple[float, float] | None = (0, 1),
    transpose: bool = True,
    dtype: torch.dtype | None = torch.float,
    as_uint8: bool = True,
) -> npt.NDArray[Any]:
    """Convert a tensor to an array (the tensor itself is left untouched).

    The steps are: squeeze, clamp, convert to ``dtype``, move to the CPU, transpose
    (``CHW`` to ``HWC``, ``NCHW`` to ``NHWC``) and map to ``uint8`` (``round(x * 255)``,
    clipped to ``[0, 255]``). The result never shares memory with ``x``.

    Args:
        x: the tensor.
        squeeze: remove dimensions of size 1.
        clamp: ``(min, max)`` to clamp to, or ``None``.
        transpose: move the channel axis last for 3-D and 4-D results.
        dtype: the dtype to convert to before the NumPy conversion, or ``None``.
        as_uint8: return ``uint8`` values scaled from ``[0, 1]``.

    Returns:
        The array.
    """
    out = x.detach()
    if squeeze:
        out = out.squeeze()
    if clamp is not None:
        out = out.clamp(clamp[0], clamp[1])
    out = out.to(device="cpu", dtype=dtype, copy=True)
    array = out.numpy()
    if transpose:
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
        elif array.ndim == 4:
            array = array.transpose(0, 2, 3, 1)
    if as_uint8:
        array = np.clip((array * 255.0).round(), 0, 255).astype(np.uint8)
    return array


def _import_pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            'showing tensors needs matplotlib: pip install "helios-blaze[examples]"'
        ) from e
    return plt


def show_tensor(tens: torch.Tensor, title: str = "debug window") -> None:
    """Show an image tensor in a matplotlib window (blocks until it is closed).

    Args:
        tens: a ``CHW`` (or ``1xCHW``) tensor with values in ``[0, 1]``.
        title: the title of the window.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    plt = _import_pyplot()
    image = tensor_to_numpy(tens)
    figure, axes = plt.subplots()
    axes.imshow(image, cmap="gray" if image.ndim == 2 else None)
    axes.set_title(title)
    axes.axis("off")
    plt.show()
    plt.close(figure)


def show_tensors(tens: torch.Tensor) -> None:
    """Show a ``CHW`` tensor, or each image of an ``NCHW`` batch in turn.

    Args:
        tens: the tensor.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    if tens.ndim == 3:
        show_tensor(tens)
        return
    for b in range(tens.shape[0]):
        show_tensor(tens[b], title=f"tensor[{b}]")


def convert_to_hwc(img: npt.NDArray[Any], input_order: str = "HWC") -> npt.NDArray[Any]:
    """Return an image in ``HWC`` order.

    A 2-D image becomes ``HxWx1`` whatever ``input_order`` says.

    Args:
        img: the image.
        input_order: ``"HWC"`` or ``"CHW"``.

    Returns:
        The image in ``HWC`` order (a view when possible).

    Raises:
        ValueError: if ``input_order`` is not ``"HWC"``/``"CHW"`` or ``img`` is not 2-D or
            3-D.
    """
    if input_order not in ("HWC", "CHW"):
        raise ValueError(f"expected input_order to be 'HWC' or 'CHW', but received '{input_order}'")
    if img.ndim == 2:
        return img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected img to be a 2-D or 3-D array, but received shape {img.shape}")
    return img.transpose(1, 2, 0) if input_order == "CHW" else img


def _check_three_channels(img: npt.NDArray[Any]) -> None:
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected img to be an HxWx3 array, but received shape {img.shape}")


def bgr2ycbcr(img: npt.NDArray[Any], only_y: bool = False) -> npt.NDArray[Any]:
    """Convert a BGR image to YCbCr (ITU-R BT.601, as MATLAB's ``rgb2ycbcr``).

    ``uint8`` input is taken in ``[0, 255]`` and the result is rounded; floating input is
    taken in ``[0, 1]`` and the result is in ``[0, 1]``. The result has the input dtype and
    the input is not modified.

    Args:
        img: an ``HxWx3`` BGR image.
        only_y: return only the Y channel (``HxW``).

    Returns:
        The YCbCr image (``HxWx3``) or its Y channel.

    Raises:
        ValueError: if ``img`` is not ``HxWx3``.
    """
    _check_three_channels(img)
    in_dtype = img.dtype
    values = img.astype(np.float64)
    if in_dtype != np.uint8:
        values *= 255.0
    if only_y:
        out = values @ _BGR_TO_Y / 255.0 + 16.0
    else:
        out = values @ _BGR_TO_YCBCR / 255.0 + _YCBCR_BIAS
    out = out.round() if in_dtype == np.uint8 else out / 255.0
    return out.astype(in_dtype)


def to_y_channel(img: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Return the Y channel of a BGR image in ``[0, 255]`` as ``float32`` (``HxWx1``).

    Images that are not ``HxWx3`` are returned as ``float32`` with the same values.

    Args:
        img: the image, with values in ``[0, 255]``.

    Returns:
        The Y channel.
    """
    if img.ndim == 3 and img.shape[2] == 3:
        y = bgr2ycbcr(img.astype(np.float32) / 255.0, only_y=True)
        return y[..., None] * 255.0
    return img.astype(np.float32)


def rgb2ycbcr_torch(img: torch.Tensor, only_y: bool = False) -> torch.Tensor:
    """Convert an RGB batch to YCbCr (ITU-R BT.601, as MATLAB's ``rgb2ycbcr``).

    Args:
        img: an ``Nx3xHxW`` tensor in ``[0, 1]``.
        only_y: return only the Y channel (``Nx1xHxW``).

    Returns:
        The YCbCr batch in ``[0, 1]``.

    Raises:
        ValueError: if ``img`` is not ``Nx3xHxW``.
    """
    if img.ndim != 4 or img.shape[1] != 3:
        raise ValueError(
            f"expected img to be an Nx3xHxW tensor, but received shape {tuple(img.shape)}"
        )
    channels_last = img.permute(0, 2, 3, 1)
    if only_y:
        weight = torch.tensor([[65.481], [128.553], [24.966]], dtype=img.dtype)
        out = channels_last @ weight.to(img.device) + 16.0
    else:
        weight = torch.tensor(
            [
                [65.481, -37.797, 112.0],
                [128.553, -74.203, -93.786],
                [24.966, 112.0, -18.214],
            ],
            dtype=img.dtype,
        )
        bias = torch.tensor([16.0, 128.0, 128.0], dtype=img.dtype)
        out = channels_last @ weight.to(img.device) + bias.to(img.device)
    return out.permute(0, 3, 1, 2) / 255.0
