import pathlib
import sys
import zlib

import numpy as np
import PIL.Image
import pytest
import torch

import helios.data.functional as hldf


def write(tmp_path, name: str, array: np.ndarray, mode: str | None = None) -> str:
    path = tmp_path / name
    image = PIL.Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return str(path)


def test_load_image_round_trips_png_files(tmp_path) -> None:
    gen = np.random.default_rng(0)
    gray8 = gen.integers(0, 256, (6, 7), dtype=np.uint8)
    gray16 = gen.integers(0, 65536, (6, 7), dtype=np.uint16)
    rgb = gen.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    rgba = gen.integers(0, 256, (6, 7, 4), dtype=np.uint8)
    for name, array in (
        ("gray8.png", gray8),
        ("gray16.png", gray16),
        ("rgb.png", rgb),
        ("rgba.png", rgba),
    ):
        loaded = hldf.load_image(write(tmp_path, name, array), flags=hldf.IMREAD_UNCHANGED)
        assert loaded.dtype == array.dtype, name
        assert loaded.shape == array.shape, name
        np.testing.assert_array_equal(loaded, array)

    unchanged = hldf.IMREAD_UNCHANGED
    bgr = hldf.load_image(tmp_path / "rgb.png", unchanged, as_rgb=False)
    np.testing.assert_array_equal(bgr, rgb[:, :, ::-1])
    bgra = hldf.load_image(tmp_path / "rgba.png", unchanged, as_rgb=False)
    np.testing.assert_array_equal(bgra, rgba[:, :, [2, 1, 0, 3]])
    np.testing.assert_array_equal(
        hldf.load_image(tmp_path / "gray8.png", unchanged, as_rgb=False), gray8
    )


def test_load_image_expands_palette_and_gray_alpha(tmp_path) -> None:
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = [255, 0, 0]
    palette = hldf.load_image(write(tmp_path, "p.png", rgb, mode="P"))
    assert palette.shape == (2, 3, 3)
    np.testing.assert_array_equal(palette, rgb)

    gray_alpha = np.dstack([np.full((2, 2), 10, np.uint8), np.full((2, 2), 200, np.uint8)])
    loaded = hldf.load_image(write(tmp_path, "la.png", gray_alpha), hldf.IMREAD_UNCHANGED)
    assert loaded.shape == (2, 2, 4)
    assert loaded[0, 0].tolist() == [10, 10, 10, 200]


def test_load_image_flags_follow_opencv(tmp_path) -> None:
    gen = np.random.default_rng(1)
    gray8 = gen.integers(0, 256, (5, 4), dtype=np.uint8)
    gray16 = gen.integers(0, 65536, (5, 4), dtype=np.uint16)
    rgb = gen.integers(0, 256, (5, 4, 3), dtype=np.uint8)
    rgba = gen.integers(0, 256, (5, 4, 4), dtype=np.uint8)
    paths = {
        name: write(tmp_path, f"{name}.png", array)
        for name, array in (("gray8", gray8), ("gray16", gray16), ("rgb", rgb), ("rgba", rgba))
    }
    # The default is IMREAD_COLOR: three 8-bit channels, gray replicated, alpha dropped.
    assert hldf.IMREAD_COLOR == 1 and hldf.IMREAD_GRAYSCALE == 0 and hldf.IMREAD_UNCHANGED == -1
    np.testing.assert_array_equal(hldf.load_image(paths["rgb"]), rgb)
    np.testing.assert_array_equal(hldf.load_image(paths["rgba"]), rgba[:, :, :3])
    np.testing.assert_array_equal(hldf.load_image(paths["gray8"]), np.dstack([gray8] * 3))
    color16 = hldf.load_image(paths["gray16"], hldf.IMREAD_COLOR)
    assert color16.dtype == np.uint8
    np.testing.assert_array_equal(color16, np.dstack([(gray16 >> 8).astype(np.uint8)] * 3))
    np.testing.assert_array_equal(
        hldf.load_image(paths["rgb"], hldf.IMREAD_COLOR, as_rgb=False), rgb[:, :, ::-1]
    )
    # IMREAD_GRAYSCALE: one 8-bit channel with BT.601 weights, as OpenCV computes it.
    gray = hldf.load_image(paths["rgb"], hldf.IMREAD_GRAYSCALE)
    expected = np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)
    assert gray.shape == (5, 4) and gray.dtype == np.uint8
    assert np.abs(gray.astype(int) - expected.astype(int)).max() == 0
    np.testing.assert_array_equal(hldf.load_image(paths["gray8"], 0), gray8)
    np.testing.assert_array_equal(hldf.load_image(paths["gray16"], 0), gray16 >> 8)
    # IMREAD_ANYDEPTH keeps 16 bits; IMREAD_ANYCOLOR keeps gray images gray.
    np.testing.assert_array_equal(hldf.load_image(paths["gray16"], hldf.IMREAD_ANYDEPTH), gray16)
    any_color = hldf.IMREAD_ANYCOLOR | hldf.IMREAD_ANYDEPTH
    np.testing.assert_array_equal(hldf.load_image(paths["gray16"], any_color), gray16)
    np.testing.assert_array_equal(hldf.load_image(paths["rgba"], any_color), rgba[:, :, :3])
    # IMREAD_UNCHANGED keeps channels (alpha too) and depth.
    np.testing.assert_array_equal(hldf.load_image(paths["rgba"], -1), rgba)
    np.testing.assert_array_equal(hldf.load_image(paths["gray16"], -1), gray16)

    for bad in (8, -2, 16):
        with pytest.raises(ValueError, match=f"unsupported flags={bad}; expected IMREAD_"):
            hldf.load_image(paths["rgb"], bad)
    with pytest.raises(TypeError, match="flags must be an int"):
        hldf.load_image(paths["rgb"], "color")  # type: ignore[arg-type]


FIXTURES = pathlib.Path(__file__).with_name("fixtures")


def test_load_image_reads_16_bit_colour_as_opencv_does() -> None:
    # Written and read back by OpenCV 4.14 (cv2.imwrite, cv2.imread): Helios 1.2.7's
    # load_image is cv2.imread, and its tests compare with it. Pillow alone reads these
    # files as 8 bits per channel.
    for name in ("rgb16", "rgba16"):
        path = FIXTURES / f"opencv_{name}.png"
        unchanged = np.load(FIXTURES / f"opencv_{name}_unchanged.npy")  # BGR(A), uint16
        loaded = hldf.load_image(path, hldf.IMREAD_UNCHANGED, as_rgb=False)
        assert loaded.dtype == np.uint16
        np.testing.assert_array_equal(loaded, unchanged)
        rgb = hldf.load_image(path, hldf.IMREAD_UNCHANGED)
        order = [2, 1, 0] if unchanged.shape[2] == 3 else [2, 1, 0, 3]
        np.testing.assert_array_equal(rgb, unchanged[:, :, order])
        color = np.load(FIXTURES / f"opencv_{name}_color.npy")  # 8 bits: value >> 8
        np.testing.assert_array_equal(hldf.load_image(path, as_rgb=False), color)


def _png_16_bit(array: np.ndarray, interlaced: bool) -> bytes:
    """A 16-bit RGB(A) PNG whose rows use every filter type in turn (0 to 4)."""
    height, width, channels = array.shape
    bpp = 2 * channels

    def filtered(rows: np.ndarray) -> bytes:
        out = bytearray()
        prior = bytes(rows.shape[1] * bpp)
        for index, row in enumerate(rows):
            raw = row.astype(">u2").tobytes()
            kind = index % 5
            line = bytearray(len(raw))
            for i, value in enumerate(raw):
                left = raw[i - bpp] if i >= bpp else 0
                up, corner = prior[i], prior[i - bpp] if i >= bpp else 0
                if kind == 1:
                    value -= left
                elif kind == 2:
                    value -= up
                elif kind == 3:
                    value -= (left + up) // 2
                elif kind == 4:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    value -= left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[i] = value % 256
            out += bytes([kind]) + line
            prior = raw
        return bytes(out)

    if interlaced:
        passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4))
        passes += ((1, 0, 2, 2), (0, 1, 1, 2))
        data = b"".join(
            filtered(array[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
            if array[y0::dy, x0::dx].size
        )  # fmt: skip
    else:
        data = filtered(array)

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    colour = 2 if channels == 3 else 6
    header = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    header += bytes([16, colour, 0, 0, int(interlaced)])
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(data))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("interlaced", [False, True])
@pytest.mark.parametrize("channels", [3, 4])
def test_load_image_decodes_every_png_filter_and_interlacing_at_16_bits(
    tmp_path, channels: int, interlaced: bool
) -> None:
    gen = np.random.default_rng(channels)
    smooth = np.linspace(0, 60000, 11 * 13 * channels).reshape(11, 13, channels)
    array = (smooth + gen.integers(0, 5000, (11, 13, channels))).astype(np.uint16)
    path = tmp_path / "image.png"
    path.write_bytes(_png_16_bit(array, interlaced))
    loaded = hldf.load_image(path, hldf.IMREAD_UNCHANGED)
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, array)
    anydepth = hldf.load_image(path, hldf.IMREAD_ANYDEPTH | hldf.IMREAD_COLOR)
    np.testing.assert_array_equal(anydepth, array[:, :, :3])


def test_load_image_missing_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError):
        hldf.load_image(tmp_path / "missing.png")


def test_load_image_pil(tmp_path) -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    path = write(tmp_path, "gray.png", gray)
    as_rgb = hldf.load_image_pil(path)
    assert isinstance(as_rgb, np.ndarray)
    assert as_rgb.shape == (3, 4, 3)
    np.testing.assert_array_equal(as_rgb[:, :, 1], gray)
    image = hldf.load_image_pil(path, out_fmt="L", as_numpy=False)
    assert isinstance(image, PIL.Image.Image)
    assert image.mode == "L" and image.size == (4, 3)


def test_tensor_to_numpy_defaults_without_mutation() -> None:
    x = torch.rand(1, 3, 8, 9) * 2 - 0.5
    before = x.clone()
    out = hldf.tensor_to_numpy(x)
    assert torch.equal(x, before)
    assert out.dtype == np.uint8 and out.shape == (8, 9, 3)
    expected = (x[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255


def test_tensor_to_numpy_options() -> None:
    x = torch.tensor([[[[0.25, 2.0]]], [[[0.5, -1.0]]]], dtype=torch.float64)
    out = hldf.tensor_to_numpy(x, squeeze=False, clamp=None, dtype=None, as_uint8=False)
    assert out.shape == (2, 1, 2, 1) and out.dtype == np.float64
    assert out[:, 0, :, 0].tolist() == [[0.25, 2.0], [0.5, -1.0]]
    out[0, 0, 0, 0] = 9.0
    assert x[0, 0, 0, 0] == 0.25  # the result does not share memory
    flat = hldf.tensor_to_numpy(torch.tensor([0.1, 0.9]), transpose=True)
    assert flat.tolist() == [26, 230]


class FakePyplot:
    """Records what show_tensor draws, without importing matplotlib in this process."""

    def __init__(self) -> None:
        self.shown: list[tuple[str, tuple[int, ...], str | None]] = []
        self._title = ""
        self._image: np.ndarray | None = None
        self._cmap: str | None = None

    def subplots(self) -> tuple["FakePyplot", "FakePyplot"]:
        return self, self

    def imshow(self, image: np.ndarray, cmap: str | None = None) -> None:
        self._image, self._cmap = image, cmap

    def set_title(self, title: str) -> None:
        self._title = title

    def axis(self, value: str) -> None:
        pass

    def show(self) -> None:
        assert self._image is not None and self._image.dtype == np.uint8
        self.shown.append((self._title, self._image.shape, self._cmap))

    def close(self, figure: object) -> None:
        pass


def test_show_tensors_draws_each_image(monkeypatch) -> None:
    fake = FakePyplot()
    monkeypatch.setattr(hldf, "_import_pyplot", lambda: fake)
    hldf.show_tensors(torch.rand(2, 3, 4, 5))
    hldf.show_tensor(torch.rand(1, 4, 5), title="gray")
    assert fake.shown == [
        ("tensor[0]", (4, 5, 3), None),
        ("tensor[1]", (4, 5, 3), None),
        ("gray", (4, 5), "gray"),
    ]


def test_show_tensor_names_the_extra_without_matplotlib(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"helios-blaze\[examples\]"):
        hldf.show_tensor(torch.rand(3, 2, 2))


def test_convert_to_hwc() -> None:
    chw = np.arange(24).reshape(2, 3, 4)
    assert hldf.convert_to_hwc(chw, "CHW").shape == (3, 4, 2)
    assert hldf.convert_to_hwc(chw, "CHW")[1, 2, 1] == chw[1, 1, 2]
    assert hldf.convert_to_hwc(chw).shape == (2, 3, 4)
    gray = np.zeros((5, 6))
    assert hldf.convert_to_hwc(gray, "CHW").shape == (5, 6, 1)
    assert hldf.convert_to_hwc(gray, "HWC").shape == (5, 6, 1)
    with pytest.raises(ValueError, match="input_order to be 'HWC' or 'CHW', but received 'NHWC'"):
        hldf.convert_to_hwc(chw, "NHWC")
    with pytest.raises(ValueError, match="2-D or 3-D"):
        hldf.convert_to_hwc(np.zeros((1, 2, 3, 4)))


def test_bgr2ycbcr_against_hand_computation() -> None:
    # One pixel: B=10, G=100, R=200.
    bgr = np.array([[[10, 100, 200]]], dtype=np.uint8)
    y = (10 * 24.966 + 100 * 128.553 + 200 * 65.481) / 255 + 16  # 118.7...
    cb = (10 * 112.0 + 100 * -74.203 + 200 * -37.797) / 255 + 128  # 73.6...
    cr = (10 * -18.214 + 100 * -93.786 + 200 * 112.0) / 255 + 128  # 178.4...
    copy = bgr.copy()
    assert hldf.bgr2ycbcr(bgr, only_y=True).tolist() == [[round(y)]]
    full = hldf.bgr2ycbcr(bgr)
    assert full.dtype == np.uint8
    assert full.tolist() == [[[round(y), round(cb), round(cr)]]]
    np.testing.assert_array_equal(bgr, copy)

    floats = bgr.astype(np.float32) / 255
    float_copy = floats.copy()
    out = hldf.bgr2ycbcr(floats, only_y=True)
    assert out.dtype == np.float32
    assert out[0, 0] == pytest.approx(y / 255, rel=1e-6)
    np.testing.assert_array_equal(floats, float_copy)
    with pytest.raises(ValueError, match=r"HxWx3 array, but received shape \(2, 2\)"):
        hldf.bgr2ycbcr(np.zeros((2, 2)))


def test_to_y_channel() -> None:
    bgr = np.array([[[10, 100, 200], [0, 0, 0]]], dtype=np.uint8)
    y = (10 * 24.966 + 100 * 128.553 + 200 * 65.481) / 255 + 16
    out = hldf.to_y_channel(bgr)
    assert out.shape == (1, 2, 1) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(y, rel=1e-5)
    assert out[0, 1, 0] == pytest.approx(16.0)
    gray = np.array([[3, 250]], dtype=np.uint8)
    assert hldf.to_y_channel(gray).tolist() == [[3.0, 250.0]]


def test_rgb2ycbcr_torch_matches_numpy_version() -> None:
    rgb = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    bgr_hwc = rgb[0].permute(1, 2, 0).numpy()[:, :, ::-1].copy()
    expected = hldf.bgr2ycbcr(bgr_hwc)
    out = hldf.rgb2ycbcr_torch(rgb)
    assert out.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, rtol=1e-12)
    only_y = hldf.rgb2ycbcr_torch(rgb, only_y=True)
    assert only_y.shape == (2, 1, 4, 5)
    torch.testing.assert_close(only_y[:, 0], out[:, 0])
    white = hldf.rgb2ycbcr_torch(torch.ones(1, 3, 1, 1), only_y=True)
    assert white.item() == pytest.approx((65.481 + 128.553 + 24.966 + 16) / 255)
    with pytest.raises(ValueError, match=r"Nx3xHxW tensor, but received shape \(3, 4, 5\)"):
        hldf.rgb2ycbcr_torch(rgb[0])
