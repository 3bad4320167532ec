import numpy as np
import PIL.Image
import pytest
import torch

import helios.data as hld
from helios.data.transforms import ToImageTensor


def rgb_array() -> np.ndarray:
    return np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3) * 4


def test_registry_creates_transform() -> None:
    assert "ToImageTensor" in hld.TRANSFORM_REGISTRY
    transform = hld.create_transform("ToImageTensor", dtype=torch.float64, scale=False)
    assert isinstance(transform, torch.nn.Module)
    assert transform(rgb_array()).dtype == torch.float64
    assert "dtype=torch.float64, scale=False" in repr(transform)


def test_uint8_hwc_array_becomes_scaled_chw() -> None:
    array = rgb_array()
    out = hld.transforms.ToImageTensor()(array)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 4, 5) and out.dtype == torch.float32
    expected = torch.from_numpy(array.transpose(2, 0, 1).astype(np.float32) / 255.0)
    assert torch.equal(out, expected)
    assert out[0, 0, 0] == 0.0 and out[2, 3, 4] == array[3, 4, 2] / 255.0


def test_grayscale_batch_and_float_arrays() -> None:
    to_tensor = ToImageTensor()
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    out = to_tensor(gray)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (1, 2, 2)
    assert torch.allclose(out[0], torch.tensor([[0.0, 1.0], [0.2, 0.4]]))

    batch = np.stack([rgb_array(), rgb_array() // 2])
    out = to_tensor(batch)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 3, 4, 5)
    assert torch.equal(out[1], to_tensor(rgb_array() // 2))

    floats = np.full((2, 3, 3), 7.5, dtype=np.float64)
    out = to_tensor(floats)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == torch.float32 and bool((out == 7.5).all())


def test_uint16_and_unscaled_and_integer_outputs() -> None:
    array = np.array([[0, 65535], [13107, 32768]], dtype=np.uint16)
    out = ToImageTensor()(array)
    assert isinstance(out, torch.Tensor)
    assert torch.allclose(out[0], torch.tensor([[0.0, 1.0], [0.2, 32768 / 65535]]))

    raw = ToImageTensor(scale=False)(rgb_array())
    assert isinstance(raw, torch.Tensor)
    assert raw.max().item() == float(rgb_array().max())

    as_uint8 = ToImageTensor(dtype=torch.uint8)(np.array([[0.0, 0.5, 1.0]]))
    assert isinstance(as_uint8, torch.Tensor)
    # floor(x * 255.999), as torchvision.transforms.v2.ToDtype(scale=True).
    assert as_uint8.tolist() == [[[0, 127, 255]]]
    down = ToImageTensor(dtype=torch.uint8)(array)
    assert isinstance(down, torch.Tensor)
    assert down.tolist() == [[[0, 255], [51, 128]]]


def test_pil_images_of_every_mode(tmp_path) -> None:
    to_tensor = ToImageTensor()
    rgb = rgb_array()
    rgba = np.dstack([rgb, np.full((4, 5), 255, np.uint8)])
    gray16 = (np.arange(20, dtype=np.uint16) * 3000).reshape(4, 5)
    images = {
        "rgb.png": (PIL.Image.fromarray(rgb), rgb.transpose(2, 0, 1) / 255.0),
        "rgba.png": (PIL.Image.fromarray(rgba), rgba.transpose(2, 0, 1) / 255.0),
        "gray.png": (PIL.Image.fromarray(rgb[:, :, 0]), rgb[None, :, :, 0] / 255.0),
        "gray16.png": (PIL.Image.fromarray(gray16), gray16[None] / 65535.0),
        "float.tiff": (
            PIL.Image.fromarray(np.full((4, 5), 0.25, np.float32)),
            np.full((1, 4, 5), 0.25),
        ),
    }
    for name, (image, expected) in images.items():
        image.save(tmp_path / name)
        with PIL.Image.open(tmp_path / name) as loaded:
            out = to_tensor(loaded)
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32, name
        assert torch.allclose(out, torch.from_numpy(expected).float()), name

    binary = to_tensor(PIL.Image.new("1", (2, 1), 1))
    assert isinstance(binary, torch.Tensor)
    assert binary.tolist() == [[[1.0, 1.0]]]


def test_tensors_are_taken_as_chw() -> None:
    chw = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    out = ToImageTensor()(chw)
    assert isinstance(out, torch.Tensor)
    assert out.shape == (3, 4, 5)
    assert torch.equal(out, chw.float() / 255)
    hw = ToImageTensor()(torch.zeros(4, 5))
    assert isinstance(hw, torch.Tensor)
    assert hw.shape == (1, 4, 5)


def test_lists_and_tuples() -> None:
    to_tensor = ToImageTensor()
    array = rgb_array()
    single = to_tensor([array])
    assert isinstance(single, torch.Tensor) and single.shape == (3, 4, 5)
    assert isinstance(to_tensor((array,)), torch.Tensor)

    as_list = to_tensor([array, PIL.Image.fromarray(array)])
    assert isinstance(as_list, list) and len(as_list) == 2
    assert torch.equal(as_list[0], as_list[1])
    as_tuple = to_tensor((array, array[:, :, 0]))
    assert isinstance(as_tuple, tuple)
    assert [t.shape[0] for t in as_tuple] == [3, 1]


def test_composes_with_a_plain_callable() -> None:
    to_tensor = ToImageTensor()

    def transform(image: np.ndarray) -> torch.Tensor:
        out = to_tensor(image)
        assert isinstance(out, torch.Tensor)
        return (out - 0.5) / 0.5

    out = transform(np.full((2, 2, 3), 255, np.uint8))
    assert bool((out == 1.0).all())


def test_input_is_not_modified_or_shared() -> None:
    array = rgb_array()
    out = ToImageTensor(dtype=torch.uint8)(array)
    assert isinstance(out, torch.Tensor)
    out.zero_()
    assert array.max() > 0


def test_bad_inputs_are_named() -> None:
    with pytest.raises(TypeError, match=r"expected dtype to be a torch\.dtype"):
        ToImageTensor(dtype="float32")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="expected scale to be a bool"):
        ToImageTensor(scale=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="received str"):
        ToImageTensor()("image.png")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"HW, HWC or NHWC array.*\(5,\)"):
        ToImageTensor()(np.zeros(5, np.uint8))
    with pytest.raises(ValueError, match="CHW or HW tensor"):
        ToImageTensor()(torch.zeros(5))
