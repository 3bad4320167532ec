import math

import numpy as np
import numpy.typing as npt
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from sklearn.metrics import average_precision_score

import helios.metrics as hlm
from helios.metrics import functional as hlmf
from helios.metrics.metrics import METRICS_REGISTRY


def _image_pair(
    seed: int, shape: tuple[int, ...] = (40, 44, 3), noise: float = 20.0
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=shape).astype(np.float64)
    # Smooth a little so that SSIM is far from 0 and from 1.
    img = (img + np.roll(img, 1, axis=0) + np.roll(img, 1, axis=1)) / 3
    img2 = np.clip(img + rng.normal(0, noise, size=shape), 0, 255)
    return img.round().astype(np.uint8), img2.round().astype(np.uint8)


def _skimage_ssim(img: npt.NDArray, img2: npt.NDArray, channel_axis: int | None = -1) -> float:
    # skimage filters the whole image (reflect padding) and then averages the SSIM map over
    # the interior only, dropping (win_size - 1) // 2 = 5 pixels on each side. Those interior
    # values never touch the padding, so they equal the "valid" filtering helios uses: the
    # two agree to rounding error, border handling included.
    return float(
        structural_similarity(
            img.astype(np.float64),
            img2.astype(np.float64),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=255,
            channel_axis=channel_axis,
        )
    )


def _y_of_bgr(img: npt.NDArray) -> npt.NDArray[np.float64]:
    # ITU-R BT.601 luma of a [0, 255] BGR image, written out independently.
    b, g, r = (img[..., i].astype(np.float64) for i in range(3))
    return 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0


def _to_batch(*images: npt.NDArray) -> torch.Tensor:
    return (
        torch.stack([torch.from_numpy(i.astype(np.float64)).permute(2, 0, 1) for i in images]) / 255
    )


# --------------------------------------------------------------------------------------
# numpy variants against independent oracles
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop_border", [0, 3])
def test_psnr_matches_skimage(crop_border: int) -> None:
    img, img2 = _image_pair(0)
    c = crop_border
    cropped = (img[c:-c, c:-c], img2[c:-c, c:-c]) if c else (img, img2)
    expected = peak_signal_noise_ratio(*cropped, data_range=255)
    assert hlmf.calculate_psnr(img, img2, crop_border) == pytest.approx(expected, rel=1e-10)
    chw = (img.transpose(2, 0, 1), img2.transpose(2, 0, 1))
    assert hlmf.calculate_psnr(*chw, crop_border, input_order="CHW") == pytest.approx(
        expected, rel=1e-10
    )


def test_psnr_of_identical_images_is_infinite() -> None:
    img, _ = _image_pair(1)
    assert hlmf.calculate_psnr(img, img.copy(), 0) == math.inf
    batch = _to_batch(img, img)
    assert hlmf.calculate_psnr_torch(batch, batch.clone(), 0) == math.inf


def test_psnr_y_channel_matches_skimage_on_luma() -> None:
    img, img2 = _image_pair(2)
    expected = peak_signal_noise_ratio(
        _y_of_bgr(img)[2:-2, 2:-2], _y_of_bgr(img2)[2:-2, 2:-2], data_range=255
    )
    assert hlmf.calculate_psnr(img, img2, 2, test_y_channel=True) == pytest.approx(
        expected, rel=1e-5
    )


@pytest.mark.parametrize("crop_border", [0, 4])
def test_ssim_matches_skimage(crop_border: int) -> None:
    img, img2 = _image_pair(3)
    c = crop_border
    cropped = (img[c:-c, c:-c], img2[c:-c, c:-c]) if c else (img, img2)
    expected = _skimage_ssim(*cropped)
    assert 0.2 < expected < 0.95
    assert hlmf.calculate_ssim(img, img2, crop_border) == pytest.approx(expected, rel=1e-9)
    chw = (img.transpose(2, 0, 1), img2.transpose(2, 0, 1))
    assert hlmf.calculate_ssim(*chw, crop_border, input_order="CHW") == pytest.approx(
        expected, rel=1e-9
    )


def test_ssim_grayscale_and_y_channel_match_skimage() -> None:
    img, img2 = _image_pair(4, shape=(31, 27))
    expected = _skimage_ssim(img, img2, channel_axis=None)
    assert hlmf.calculate_ssim(img, img2, 0) == pytest.approx(expected, rel=1e-9)

    img, img2 = _image_pair(5)
    expected = _skimage_ssim(_y_of_bgr(img), _y_of_bgr(img2), channel_axis=None)
    assert hlmf.calculate_ssim(img, img2, 0, test_y_channel=True) == pytest.approx(
        expected, rel=1e-5
    )


def test_ssim_of_identical_images_is_one() -> None:
    img, _ = _image_pair(6)
    assert hlmf.calculate_ssim(img, img, 0) == pytest.approx(1.0)


def test_mae_matches_numpy() -> None:
    img, img2 = _image_pair(7)
    expected = np.mean(np.abs(img.astype(np.float64) - img2)) / 255
    assert hlmf.calculate_mae(img, img2, scale=255) == pytest.approx(expected, rel=1e-12)
    t_img, t_img2 = torch.from_numpy(img), torch.from_numpy(img2)
    assert hlmf.calculate_mae_torch(t_img, t_img2, scale=255) == pytest.approx(expected, rel=1e-12)


def _sklearn_map(targs: npt.NDArray, preds: npt.NDArray) -> float:
    aps = [
        average_precision_score(targs[:, k], preds[:, k])
        for k in range(targs.shape[1])
        if targs[:, k].any()
    ]
    return 100.0 * float(np.mean(aps))


def test_map_matches_sklearn() -> None:
    rng = np.random.default_rng(8)
    targs = (rng.random((60, 7)) < 0.3).astype(np.int64)
    targs[:, 3] = 0  # a class without positives is skipped
    targs[0, 5] = 1
    preds = rng.random((60, 7))
    preds[:, 2] = np.round(preds[:, 2], 1)  # ties form one threshold, as in sklearn
    preds[:, 6] = 0.5  # every score tied
    assert hlmf.calculate_mAP(targs, preds) == pytest.approx(_sklearn_map(targs, preds), rel=1e-12)


def test_map_perfect_ranking_and_edge_cases() -> None:
    targs = np.array([[1, 0], [0, 1], [0, 0]])
    preds = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3]])
    assert hlmf.calculate_mAP(targs, preds) == pytest.approx(100.0)
    assert hlmf.calculate_mAP(np.zeros((3, 2)), preds) == 0.0
    assert hlmf.calculate_mAP(np.zeros((0, 2)), np.zeros((0, 2))) == 0.0
    with pytest.raises(ValueError, match=r"shapes are different: \(3, 2\) and \(2, 2\)"):
        hlmf.calculate_mAP(targs, preds[:2])
    with pytest.raises(ValueError, match=r"expected \(samples, classes\) arrays.*\(3,\)"):
        hlmf.calculate_mAP(targs[:, 0], preds[:, 0])


# --------------------------------------------------------------------------------------
# batched torch variants
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("crop_border", [0, 2])
def test_batched_torch_equals_mean_of_numpy(crop_border: int) -> None:
    pairs = [_image_pair(seed, noise=5.0 + 10 * seed) for seed in (10, 11, 12)]
    batch = _to_batch(*(p[0] for p in pairs))
    batch2 = _to_batch(*(p[1] for p in pairs))

    psnr = np.mean([hlmf.calculate_psnr(a, b, crop_border) for a, b in pairs])
    ssim = np.mean([hlmf.calculate_ssim(a, b, crop_border) for a, b in pairs])
    assert hlmf.calculate_psnr_torch(batch, batch2, crop_border) == pytest.approx(psnr, rel=1e-10)
    assert hlmf.calculate_ssim_torch(batch, batch2, crop_border) == pytest.approx(ssim, rel=1e-10)

    # numpy takes BGR images, torch RGB: flip the channels for the Y-channel variants.
    y_psnr = np.mean(
        [hlmf.calculate_psnr(a, b, crop_border, test_y_channel=True) for a, b in pairs]
    )
    y_ssim = np.mean(
        [hlmf.calculate_ssim(a, b, crop_border, test_y_channel=True) for a, b in pairs]
    )
    rgb, rgb2 = batch.flip(1), batch2.flip(1)
    assert hlmf.calculate_psnr_torch(rgb, rgb2, crop_border, test_y_channel=True) == pytest.approx(
        y_psnr, rel=1e-5
    )
    assert hlmf.calculate_ssim_torch(rgb, rgb2, crop_border, test_y_channel=True) == pytest.approx(
        y_ssim, rel=1e-5
    )


def test_torch_variants_accept_float32_and_single_images() -> None:
    img, img2 = _image_pair(13)
    batch, batch2 = _to_batch(img).float(), _to_batch(img2).float()
    psnr, ssim = hlmf.calculate_psnr(img, img2, 1), hlmf.calculate_ssim(img, img2, 1)
    assert hlmf.calculate_psnr_torch(batch, batch2, 1) == pytest.approx(psnr, rel=1e-5)
    assert hlmf.calculate_ssim_torch(batch, batch2, 1) == pytest.approx(ssim, rel=1e-5)
    assert hlmf.calculate_psnr_torch(batch[0], batch2[0], 1) == pytest.approx(psnr, rel=1e-5)
    assert hlmf.calculate_ssim_torch(batch[0], batch2[0], 1) == pytest.approx(ssim, rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_variants_on_cuda() -> None:
    pairs = [_image_pair(seed) for seed in (14, 15)]
    batch = _to_batch(*(p[0] for p in pairs))
    batch2 = _to_batch(*(p[1] for p in pairs))
    cuda, cuda2 = batch.cuda(), batch2.cuda()
    for fn in (hlmf.calculate_psnr_torch, hlmf.calculate_ssim_torch):
        for y in (False, True):
            assert fn(cuda, cuda2, 1, y) == pytest.approx(fn(batch, batch2, 1, y), rel=1e-9)
    assert hlmf.calculate_mae_torch(cuda, cuda2) == pytest.approx(
        hlmf.calculate_mae_torch(batch, batch2), rel=1e-9
    )
    metric = hlm.CalculateSSIM(crop_border=1)
    assert metric(cuda, cuda2) == pytest.approx(hlmf.calculate_ssim_torch(batch, batch2, 1))


# --------------------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------------------


def test_functional_argument_errors() -> None:
    img, img2 = _image_pair(16, shape=(20, 20, 3))
    with pytest.raises(ValueError, match=r"shapes are different: \(20, 20, 3\) and \(20, 19, 3\)"):
        hlmf.calculate_psnr(img, img2[:, :19], 0)
    with pytest.raises(ValueError, match=r"crop_border must be a non-negative int.*-1"):
        hlmf.calculate_psnr(img, img2, -1)
    with pytest.raises(ValueError, match=r"input_order.*'WHC'"):
        hlmf.calculate_ssim(img, img2, 0, input_order="WHC")
    with pytest.raises(ValueError, match=r"0x0 after cropping crop_border=10.*at least 1x1"):
        hlmf.calculate_psnr(img, img2, 10)
    with pytest.raises(ValueError, match=r"10x10 after cropping crop_border=5.*at least 11x11"):
        hlmf.calculate_ssim(img, img2, 5)
    batch, batch2 = _to_batch(img), _to_batch(img2)
    with pytest.raises(ValueError, match=r"10x10 after cropping.*at least 11x11"):
        hlmf.calculate_ssim_torch(batch, batch2, 5)
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) or \(C, H, W\) tensor"):
        hlmf.calculate_psnr_torch(batch[0, 0], batch2[0, 0], 0)
    with pytest.raises(ValueError, match=r"scale must be positive, got scale=0"):
        hlmf.calculate_mae(img, img2, scale=0)
    with pytest.raises(ValueError, match=r"scale must be positive, got scale=-1"):
        hlmf.calculate_mae_torch(batch, batch2, scale=-1)


# --------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------


def test_registry_and_create_metric() -> None:
    assert hlm.METRICS_REGISTRY is METRICS_REGISTRY
    assert str(METRICS_REGISTRY) == "metrics"
    assert set(METRICS_REGISTRY.keys()) == {
        "CalculatePSNR",
        "CalculateSSIM",
        "CalculateMAP",
        "CalculateMAE",
    }
    metric = hlm.create_metric("CalculatePSNR", crop_border=2, input_order="CHW")
    assert isinstance(metric, hlm.CalculatePSNR)
    with pytest.raises(KeyError, match="No object called 'PSNR'"):
        hlm.create_metric("PSNR")


@pytest.mark.parametrize("test_y_channel", [False, True])
def test_modules_dispatch_to_functional(test_y_channel: bool) -> None:
    img, img2 = _image_pair(17)
    chw, chw2 = img.transpose(2, 0, 1), img2.transpose(2, 0, 1)
    batch, batch2 = _to_batch(img), _to_batch(img2)
    psnr = hlm.CalculatePSNR(crop_border=1, input_order="CHW", test_y_channel=test_y_channel)
    ssim = hlm.CalculateSSIM(crop_border=1, input_order="CHW", test_y_channel=test_y_channel)

    assert psnr(chw, chw2) == hlmf.calculate_psnr(chw, chw2, 1, "CHW", test_y_channel)
    assert ssim(chw, chw2) == hlmf.calculate_ssim(chw, chw2, 1, "CHW", test_y_channel)
    assert psnr(batch, batch2) == hlmf.calculate_psnr_torch(batch, batch2, 1, test_y_channel)
    assert ssim(batch, batch2) == hlmf.calculate_ssim_torch(batch, batch2, 1, test_y_channel)


def test_mae_and_map_modules() -> None:
    img, img2 = _image_pair(18)
    mae = hlm.CalculateMAE(scale=255)
    assert mae(img, img2) == hlmf.calculate_mae(img, img2, 255)
    t_img, t_img2 = torch.from_numpy(img), torch.from_numpy(img2)
    assert mae(t_img, t_img2) == hlmf.calculate_mae_torch(t_img, t_img2, 255)

    rng = np.random.default_rng(19)
    targs, preds = (rng.random((20, 4)) < 0.5).astype(np.float32), rng.random((20, 4))
    mean_ap = hlm.CalculateMAP()
    assert mean_ap(targs, preds) == hlmf.calculate_mAP(targs, preds)
    assert mean_ap(torch.from_numpy(targs), torch.from_numpy(preds)) == pytest.approx(
        hlmf.calculate_mAP(targs, preds)
    )


@pytest.mark.parametrize(
    "metric",
    [hlm.CalculatePSNR(0), hlm.CalculateSSIM(0), hlm.CalculateMAE(), hlm.CalculateMAP()],
    ids=lambda m: type(m).__name__,
)
def test_modules_reject_mixed_inputs(metric: torch.nn.Module) -> None:
    array = np.zeros((12, 12, 1))
    with pytest.raises(
        TypeError, match=r"two torch.Tensor or two numpy.ndarray.*ndarray and Tensor"
    ):
        metric(array, torch.zeros(1, 1, 12, 12))
    with pytest.raises(TypeError, match=r"got list and ndarray"):
        metric([0.0], array)


def test_module_constructor_errors() -> None:
    with pytest.raises(ValueError, match=r"crop_border must be a non-negative int.*-2"):
        hlm.CalculatePSNR(crop_border=-2)
    with pytest.raises(ValueError, match=r"crop_border.*1\.5"):
        hlm.CalculateSSIM(crop_border=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"input_order must be one of.*'NHWC'"):
        hlm.CalculateSSIM(crop_border=0, input_order="NHWC")
    with pytest.raises(ValueError, match=r"scale must be positive, got scale=0"):
        hlm.CalculateMAE(scale=0)
