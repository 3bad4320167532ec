import pathlib
import sys

import numpy as np
import pytest
import torch
from torch import nn

from helios.nn.layers import AdaptiveAvgPool2d
from helios.onnx import export_to_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

# Raised inside torch.export on torch 2.13; nothing helios can act on.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings(
        r"ignore:`isinstance\(treespec, LeafSpec\)` is deprecated:FutureWarning"
    ),
]


def _run_ort(path: pathlib.Path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.dropout = nn.Dropout(0.5)
        self.pool = AdaptiveAvgPool2d((4, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.dropout(torch.relu(self.bn(self.conv(x)))))


class _Counter(nn.Module):
    """Adds the number of earlier calls, so the traced graph differs from the eager run."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x + self.calls


def test_export_conv_net_and_validate(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    net = _ConvNet().train()
    x = torch.randn(2, 3, 16, 16)
    out_path = tmp_path / "models" / "net.onnx"

    export_to_onnx(net, x, out_path, validate_output=True, input_names=["image"])

    assert not net.training
    onnx.checker.check_model(str(out_path))
    assert [i.name for i in onnx.load(str(out_path)).graph.input] == ["image"]
    # Only the model (and any external-data file next to it) is left: no temporary folder.
    leftovers = [p.name for p in out_path.parent.iterdir()]
    assert all(name.startswith("net.onnx") for name in leftovers), leftovers
    with torch.no_grad():
        expected = net(x).numpy()
    np.testing.assert_allclose(_run_ort(out_path, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("output_size", [(5, 7), 7, (None, 7), (7, None)])
def test_export_adaptive_avg_pool(
    tmp_path: pathlib.Path, output_size: int | tuple[int | None, int | None]
) -> None:
    x = torch.randn(1, 2, 23, 30)
    out_path = tmp_path / "pool.onnx"
    export_to_onnx(AdaptiveAvgPool2d(output_size), x, out_path, validate_output=True)
    expected_shape = nn.AdaptiveAvgPool2d(output_size)(x).shape
    assert _run_ort(out_path, x).shape == tuple(expected_shape)


def test_validation_failure_deletes_the_export(tmp_path: pathlib.Path) -> None:
    out_path = tmp_path / "counter.onnx"
    out_path.write_bytes(b"previous model")
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        export_to_onnx(
            _Counter(),
            torch.zeros(2, 3),
            out_path,
            validate_output=True,
            save_on_validation_fail=False,
        )
    # The new export is discarded and the file that was there is left untouched.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter.onnx"]
    assert out_path.read_bytes() == b"previous model"


def test_validation_failure_keeps_the_export_when_asked(tmp_path: pathlib.Path) -> None:
    out_path = tmp_path / "counter.onnx"
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        export_to_onnx(_Counter(), torch.zeros(2, 3), out_path, validate_output=True)
    onnx.checker.check_model(str(out_path))
    # The eager call returned x + 1; the exported graph was traced on a later call.
    assert np.all(_run_ort(out_path, torch.zeros(2, 3)) > 1)
    assert all(p.name.startswith("counter.onnx") for p in tmp_path.iterdir())


def test_export_error_leaves_nothing_behind(tmp_path: pathlib.Path) -> None:
    class _Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.jit.is_tracing() or torch.compiler.is_compiling():
                raise RuntimeError("cannot export this")
            return x

    with pytest.raises(Exception, match="cannot export this"):
        export_to_onnx(_Broken(), torch.zeros(1), tmp_path / "broken.onnx")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("module", "validate"), [("onnx", False), ("onnxruntime", True)])
def test_missing_dependency_names_the_extra(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, module: str, validate: bool
) -> None:
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf'needs {module}; .*pip install "helios-blaze\[onnx\]"'):
        export_to_onnx(nn.Identity(), torch.zeros(1), tmp_path / "x.onnx", validate_output=validate)
    assert list(tmp_path.iterdir()) == []
