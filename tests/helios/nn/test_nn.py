import copy
from typing import Any

import pytest
import torch
from torch import nn

import helios.nn as hln
from helios.nn import layers, swa_utils
from helios.nn.utils import NETWORK_REGISTRY


def test_network_registry_starts_empty_and_creates_networks() -> None:
    assert hln.NETWORK_REGISTRY is NETWORK_REGISTRY
    assert str(NETWORK_REGISTRY) == "network"
    assert hln.swa_utils is swa_utils

    @NETWORK_REGISTRY.register(suffix="blocks_test")
    class TinyNet(nn.Module):
        def __init__(self, width: int, bias: bool = True) -> None:
            super().__init__()
            self.fc = nn.Linear(width, 1, bias=bias)

    assert "TinyNet_blocks_test" in NETWORK_REGISTRY
    net = hln.create_network("TinyNet_blocks_test", 3, bias=False)
    assert isinstance(net, TinyNet)
    assert net.fc.in_features == 3
    assert net.fc.bias is None
    with pytest.raises(KeyError, match="No object called 'Missing'"):
        hln.create_network("Missing")


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        self.fc_nobias = nn.Linear(4, 2, bias=False)
        self.conv1d = nn.Conv1d(2, 2, 3)
        self.ln = nn.LayerNorm(4)


def test_default_init_weights_matches_kaiming_scaled() -> None:
    net = _Mixed()
    with torch.no_grad():
        net.bn.weight.fill_(3.0)
    untouched = {
        k: v.clone() for k, v in net.state_dict().items() if k.startswith(("conv1d", "ln"))
    }

    expected = copy.deepcopy(net)
    torch.manual_seed(7)
    for layer in (expected.conv, expected.fc, expected.fc_nobias):
        nn.init.kaiming_normal_(layer.weight, mode="fan_out")

    torch.manual_seed(7)
    hln.default_init_weights(net, scale=0.1, bias_fill=0.25, mode="fan_out")

    for name in ("conv", "fc", "fc_nobias"):
        layer, ref = getattr(net, name), getattr(expected, name)
        assert torch.allclose(layer.weight, ref.weight * 0.1)
        if layer.bias is not None:
            assert torch.all(layer.bias == 0.25)
    assert torch.all(net.bn.weight == 1.0)
    assert torch.all(net.bn.bias == 0.25)
    for key, value in untouched.items():
        assert torch.equal(net.state_dict()[key], value)


def test_default_init_weights_accepts_a_list() -> None:
    nets = [nn.Linear(5, 5), nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm1d(3))]
    hln.default_init_weights(nets, bias_fill=1.0)
    assert torch.all(nets[0].bias == 1.0)
    assert torch.all(nets[1][0].bias == 1.0)
    assert torch.all(nets[1][1].bias == 1.0)


# --------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------


class _AB(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.b(self.a(x)))


class _BA(nn.Module):
    """Same state keys as _AB, registered in another order."""

    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(2)
        self.b = nn.Linear(2, 2)
        self.a = nn.Linear(2, 2)


def test_ema_holds_a_copy_in_eval_mode() -> None:
    net = _AB().train()
    ema = swa_utils.EMA(net, decay=0.9)
    assert ema.module is not net
    assert not ema.module.training
    assert net.training
    assert ema.decay == 0.9
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, net.state_dict()[key])
        assert value.data_ptr() != net.state_dict()[key].data_ptr()
    x = torch.randn(3, 2)
    assert torch.equal(ema(x), ema.module(x))


def test_ema_update_blends_floats_and_copies_integer_buffers() -> None:
    net = _AB()
    ema = swa_utils.EMA(net, decay=0.75)
    old = {k: v.clone() for k, v in ema.module.state_dict().items()}
    new_net = _AB()
    new_net.train()
    new_net.bn(torch.randn(4, 2))  # changes running stats and num_batches_tracked
    ema.update(new_net)
    for key, value in ema.module.state_dict().items():
        src = new_net.state_dict()[key]
        if value.is_floating_point():
            assert torch.allclose(value, 0.75 * old[key] + 0.25 * src), key
        else:
            assert torch.equal(value, src), key
    assert ema.module.state_dict()["bn.num_batches_tracked"].item() == 1


def test_ema_update_pairs_by_key_not_by_order() -> None:
    ema = swa_utils.EMA(_AB(), decay=0.0)
    other = _BA()
    assert list(other.state_dict()) != list(ema.module.state_dict())
    ema.update(other)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, other.state_dict()[key]), key


def test_ema_set_copies_weights() -> None:
    ema = swa_utils.EMA(_AB(), decay=0.99)
    other = _AB()
    ema.set(other)
    for key, value in ema.module.state_dict().items():
        assert torch.equal(value, other.state_dict()[key])


def test_ema_rejects_mismatched_networks() -> None:
    ema = swa_utils.EMA(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(
        ValueError,
        match=r"missing keys \['0.bias', '0.weight'\], unexpected keys \['1.bias', '1.weight'\]",
    ):
        ema.update(nn.Sequential(nn.Identity(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"shape mismatch for key '0.weight'.*\(2, 2\).*\(3, 2\)"):
        ema.set(nn.Sequential(nn.Linear(2, 3)))


@pytest.mark.parametrize("decay", [-0.1, 1.5])
def test_ema_rejects_bad_decay(decay: float) -> None:
    with pytest.raises(ValueError, match=rf"decay must be in \[0, 1\], got {decay}"):
        swa_utils.EMA(nn.Linear(1, 1), decay=decay)


def test_ema_device() -> None:
    ema = swa_utils.EMA(nn.Linear(2, 2), decay=0.5, device=torch.device("cpu"))
    ema.update(nn.Linear(2, 2))
    assert ema.module.weight.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_ema_device_cuda() -> None:
    net = nn.Linear(2, 2)
    ema = swa_utils.EMA(net, decay=0.5, device=torch.device("cuda"))
    assert ema.module.weight.is_cuda
    other = nn.Linear(2, 2)
    ema.update(other)
    expected = 0.5 * net.weight + 0.5 * other.weight
    assert torch.allclose(ema.module.weight.cpu(), expected)


# --------------------------------------------------------------------------------------
# AdaptiveAvgPool2d
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("output_size", [(5, 7), 7, (None, 7), (7, None), (1, 1)])
@pytest.mark.parametrize("input_hw", [(35, 28), (23, 19)])
def test_adaptive_avg_pool_matches_torch_shapes(
    output_size: int | tuple[int | None, int | None], input_hw: tuple[int, int]
) -> None:
    x = torch.randn(2, 3, *input_hw)
    ours = layers.AdaptiveAvgPool2d(output_size)(x)
    theirs = nn.AdaptiveAvgPool2d(output_size)(x)
    assert ours.shape == theirs.shape


@pytest.mark.parametrize("output_size", [(5, 7), 7, (None, 7), (7, None)])
def test_adaptive_avg_pool_matches_torch_values_when_divisible(
    output_size: int | tuple[int | None, int | None],
) -> None:
    x = torch.randn(2, 3, 35, 28)
    ours = layers.AdaptiveAvgPool2d(output_size)(x)
    theirs = nn.AdaptiveAvgPool2d(output_size)(x)
    assert torch.allclose(ours, theirs, atol=1e-6)
    chw = layers.AdaptiveAvgPool2d(output_size)(x[0])
    assert torch.allclose(chw, theirs[0], atol=1e-6)


@pytest.mark.parametrize(
    ("output_size", "error", "match"),
    [
        (1.0, TypeError, r"output_size must be an int or a tuple.*1\.0 \(float\)"),
        (None, TypeError, r"output_size must be an int or a tuple.*None \(NoneType\)"),
        ([1, 2], TypeError, r"output_size must be an int or a tuple.*\(list\)"),
        (True, TypeError, r"output_size must be an int or a tuple.*True \(bool\)"),
        ((1, 2, 3), ValueError, r"tuple of length 2.*\(1, 2, 3\) \(length 3\)"),
        ((1,), ValueError, r"tuple of length 2.*\(1,\) \(length 1\)"),
        ((1, 1.0), TypeError, r"entries of output_size must be int or None.*\(1, 1\.0\)"),
        ((1.0, 1), TypeError, r"entries of output_size must be int or None.*\(1\.0, 1\)"),
        (0, ValueError, r"entries of output_size must be positive.*output_size=0"),
        ((None, -2), ValueError, r"must be positive.*\(None, -2\)"),
    ],
)
def test_adaptive_avg_pool_validation(
    output_size: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        layers.AdaptiveAvgPool2d(output_size)  # type: ignore[arg-type]


def test_adaptive_avg_pool_rejects_upsampling() -> None:
    pool = layers.AdaptiveAvgPool2d((8, None))
    with pytest.raises(ValueError, match=r"output_size \(8, None\) is larger than.*\(4, 4\)"):
        pool(torch.zeros(1, 1, 4, 4))
    assert "output_size=(8, None)" in repr(pool)


@pytest.mark.parametrize("output_size", [1.0, None, (1, 2, 3), (1,), (1, 1.0), (1.0, 1), 0])
def test_adaptive_avg_pool_raises_runtime_error_as_documented(output_size: Any) -> None:
    with pytest.raises(RuntimeError, match="output_size"):
        layers.AdaptiveAvgPool2d(output_size)
