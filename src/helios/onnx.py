"""Export networks to ONNX, optionally checking the exported graph against PyTorch."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from typing import Any

import numpy as np
import torch
from torch import nn

_ONNX_EXTRA_HINT = 'install the ONNX extra with: pip install "helios-blaze[onnx]"'


def _import_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise ImportError(f"exporting to ONNX needs onnx; {_ONNX_EXTRA_HINT}") from e
    return onnx


def _import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"validating ONNX output needs onnxruntime; {_ONNX_EXTRA_HINT}") from e
    return onnxruntime


def _as_tuple(value: Any) -> tuple[Any, ...]:
    if isinstance(value, tuple | list):
        return tuple(value)
    return (value,)


def _validate_output(
    model_path: pathlib.Path,
    args: tuple[torch.Tensor, ...],
    expected: tuple[torch.Tensor, ...],
    rtol: float,
    atol: float,
) -> None:
    ort = _import_onnxruntime()
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    input_names = [i.name for i in session.get_inputs()]
    feed = {name: arg.detach().cpu().numpy() for name, arg in zip(input_names, args, strict=False)}
    outputs = session.run(None, feed)
    if len(outputs) != len(expected):
        raise AssertionError(
            f"the ONNX model returns {len(outputs)} outputs, the network returns {len(expected)}"
        )
    for torch_out, ort_out in zip(expected, outputs, strict=True):
        np.testing.assert_allclose(torch_out.detach().cpu().numpy(), ort_out, rtol=rtol, atol=atol)


def export_to_onnx(
    net: nn.Module,
    net_args: torch.Tensor | tuple[torch.Tensor, ...],
    out_path: pathlib.Path | str,
    validate_output: bool = False,
    save_on_validation_fail: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-5,
    **kwargs: Any,
) -> None:
    """Export a network to ONNX.

    The network is put in evaluation mode (it stays there) and exported with
    :py:func:`torch.onnx.export` (PyTorch's default exporter unless ``dynamo`` is passed;
    ``verbose`` defaults to ``False``). The graph is checked with
    ``onnx.checker.check_model`` and, if requested, run with ONNX Runtime on the CPU and
    compared with the network's output.

    The export is written to a temporary folder next to ``out_path`` and moved into place
    only when it is kept, so a failed export never leaves a partial file and never
    replaces an existing one. Any external-data file the exporter writes (e.g.
    ``model.onnx.data``) is moved along with the model.

    The network must return a tensor or a tuple/list of tensors.

    Args:
        net: the network to export.
        net_args: the example input: a tensor or a tuple of tensors.
        out_path: where to save the ONNX model.
        validate_output: compare the ONNX Runtime output with the network's output.
        save_on_validation_fail: keep the exported model when the outputs differ.
        rtol: relative tolerance of the comparison.
        atol: absolute tolerance of the comparison.
        **kwargs: further keyword arguments for :py:func:`torch.onnx.export`.

    Raises:
        ImportError: if ``onnx`` (or ``onnxruntime`` when validating) is not installed.
        AssertionError: if ``validate_output`` is true and the outputs differ (the model is
            saved first when ``save_on_validation_fail`` is true).
    """
    onnx = _import_onnx()
    if validate_output:
        _import_onnxruntime()

    out_path = pathlib.Path(out_path)
    args = _as_tuple(net_args)
    kwargs.setdefault("verbose", False)

    net.eval()
    with torch.no_grad():
        expected = _as_tuple(net(*args))

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = pathlib.Path(tempfile.mkdtemp(prefix=".onnx-export-", dir=out_path.parent))
    try:
        tmp_model = tmp_dir / out_path.name
        torch.onnx.export(net, args, str(tmp_model), **kwargs)
        onnx.checker.check_model(str(tmp_model))

        if validate_output:
            try:
                _validate_output(tmp_model, args, expected, rtol, atol)
            except AssertionError:
                if save_on_validation_fail:
                    _move_into_place(tmp_dir, tmp_model, out_path)
                raise
        _move_into_place(tmp_dir, tmp_model, out_path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _move_into_place(
    tmp_dir: pathlib.Path, tmp_model: pathlib.Path, out_path: pathlib.Path
) -> None:
    # External data files first, so the model never points at files that are not there.
    for path in tmp_dir.iterdir():
        if path != tmp_model:
            os.replace(path, out_path.parent / path.name)
    os.replace(tmp_model, out_path)
