"""``helios export``: a sharded checkpoint as one file, and a model's networks as ONNX.

* ``helios export RUN.dcp [-o OUT.pth]`` writes the full, unsharded checkpoint file
  (:py:func:`helios.trainer.export_full_checkpoint`); a trainer resumes from it and
  ``torch.load(OUT)["model"]`` loads into unsharded networks.
* ``helios export CHECKPOINT --onnx OUT.onnx --config CONFIG`` builds the model the config
  names, loads the checkpoint's weights into it and exports the networks its
  ``onnx_exports()`` method returns: ``{name: (network, example input)}``. A model without
  that method defines no ONNX export, and the command says so.
"""

from __future__ import annotations

import pathlib
import tempfile
from collections.abc import Mapping
from typing import Any

from .config import ConfigError, ResolvedConfig
from .inspection import CheckpointReadError, read_checkpoint


def export_single_file(path: pathlib.Path, output: pathlib.Path | None) -> pathlib.Path:
    """Write a ``.dcp`` checkpoint folder as one full checkpoint file.

    Raises:
        CheckpointReadError: if ``path`` is not a sharded checkpoint folder.
    """
    from helios.trainer import export_full_checkpoint

    if not (path.is_dir() and path.suffix == ".dcp"):
        raise CheckpointReadError(
            f"{path} is not a sharded checkpoint (a .dcp folder): it is one file "
            "already. To export its networks to ONNX, pass --onnx OUT.onnx --config CONFIG"
        )
    try:
        return export_full_checkpoint(path, output)
    except ValueError as error:
        raise CheckpointReadError(f"{path}: {error}") from error


def export_onnx(
    path: pathlib.Path, config: ResolvedConfig, output: pathlib.Path
) -> list[pathlib.Path]:
    """Export the networks of a checkpoint's model to ONNX.

    Args:
        path: the checkpoint (file or ``.dcp`` folder).
        config: the run's config (it names the model class).
        output: the ONNX file; with several networks ``<stem>_<name>.onnx`` each.

    Returns:
        The files written.

    Raises:
        ConfigError: if the model defines no ONNX export.
        CheckpointReadError: if the checkpoint cannot be read.
    """
    import torch

    from helios.onnx import export_to_onnx

    checked = config.model
    model = checked.target(**checked.kwargs)
    exports = getattr(model, "onnx_exports", None)
    if not callable(exports):
        raise ConfigError(
            "model",
            f"{type(model).__name__} defines no ONNX export: give it a method onnx_exports() "
            "returning {name: (network, example input)}",
        )
    model.device = torch.device("cpu")
    model.map_loc = "cpu"
    model.is_distributed = False
    model.rank = 0
    model.setup(fast_init=True)
    state = _model_state(path, model.types_for_safe_load())
    model.load_state_dict(state, fast_init=True)
    model.eval()
    networks: Mapping[str, Any] = exports()
    if not isinstance(networks, Mapping) or not networks:
        raise ConfigError(
            "model", f"{type(model).__name__}.onnx_exports() must return a non-empty mapping"
        )
    written = []
    for name, (network, example) in networks.items():
        target = output if len(networks) == 1 else output.with_name(f"{output.stem}_{name}.onnx")
        export_to_onnx(network, example, target, validate_output=True)
        written.append(target)
    return written


def _model_state(path: pathlib.Path, types: list[type]) -> Any:
    if path.is_dir():
        with tempfile.TemporaryDirectory() as folder:
            full = export_single_file(path, pathlib.Path(folder) / "full.pth")
            return read_checkpoint(full, extra_types=types).contents["model"]
    return read_checkpoint(path, extra_types=types).contents["model"]


__all__ = ["export_onnx", "export_single_file"]
