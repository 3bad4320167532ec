"""helios inspect (and export, migrate) on real checkpoints: one file, a .dcp folder, a Helios
1.2.7 file, and damaged or hostile files, read safely without the model's code."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import shutil

import pytest
import torch
from cli_support import HERE, MLP_CHECKPOINT, mlp_config, run_helios

from helios.cli.config import import_modules
from helios.cli.main import main
from helios.core import safe_torch_load
from helios.trainer import register_trainer_types_for_safe_load
from helios.trainer.state import TrainingState

pytestmark = pytest.mark.slow

NAME = MLP_CHECKPOINT.name


@pytest.fixture
def trained(mlp_run: pathlib.Path) -> pathlib.Path:
    """A real checkpoint of a run started by the command (10 iterations of the MLP)."""
    return mlp_run / MLP_CHECKPOINT


def _load(path: pathlib.Path) -> dict:
    register_trainer_types_for_safe_load()
    return safe_torch_load(path, map_location="cpu")


def _inspect_json(path: pathlib.Path, cwd: pathlib.Path, *extra: str) -> dict:
    """``helios inspect --json``, run as the installed command."""
    result = run_helios("inspect", path, "--json", *extra, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _main(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """The command in this process (what the installed one runs): status, stdout, stderr."""
    capsys.readouterr()
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_inspect_a_single_file_checkpoint(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    summary = _inspect_json(trained, tmp_path)
    assert summary["kind"] == "file"
    assert summary["position"]["current_iteration"] == 10
    assert summary["world_size"] == 1
    assert summary["precision"] == "32"
    assert summary["model"]["networks"]["_net"] == {
        "0.weight": {"shape": [16, 64], "dtype": "float32"},
        "0.bias": {"shape": [16], "dtype": "float32"},
        "2.weight": {"shape": [10, 16], "dtype": "float32"},
        "2.bias": {"shape": [10], "dtype": "float32"},
    }
    adam = summary["model"]["optimizers"]["_optimizer"]
    assert adam["parameters"] == 4
    assert adam["hyperparameters"][0]["lr"] == 0.01
    assert summary["parts"]["model"]["tensor_bytes"] > 4 * (16 * 64 + 16 + 10 * 16 + 10)
    assert summary["config"]["trainer"]["total_steps"] == 10
    env = summary["environment"]
    assert env["torch"] == str(torch.__version__)
    assert env["device"] == "cpu"
    assert {"helios", "python", "platform"} <= set(env)
    assert env["earlier"] == []

    status, text, err = _main(capsys, "inspect", trained)
    assert status == 0, err
    assert "position: epoch 1, iteration 10" in text
    assert "network _net:\n  0.weight: (16, 64) float32" in text
    assert "optimizer _optimizer: 1 param group(s), 4 parameters" in text
    assert "environment: helios" in text
    assert "  type: MLPClassifier" in text


def _write_dcp(source: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
    """A sharded checkpoint folder in the trainer's layout (model in Distributed Checkpoint)."""
    import torch.distributed.checkpoint as dcp

    contents = _load(source)
    folder = target / source.with_suffix(".dcp").name
    dcp.save(
        {"model": contents.pop("model")}, storage_writer=dcp.FileSystemWriter(folder), no_dist=True
    )
    contents["sharded_parts"] = ["model"]
    torch.save(contents, folder / "helios.pth")
    return folder


def test_inspect_and_export_a_sharded_checkpoint_folder(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _write_dcp(trained, tmp_path)
    summary = _inspect_json(folder, tmp_path)
    assert summary["kind"] == "sharded folder"
    assert summary["sharded_parts"] == ["model"]
    assert summary["parts"]["model"] == {"sharded": True}
    assert {"helios.pth", ".metadata", "__0_0.distcp"} <= set(summary["files"])
    assert summary["position"]["current_iteration"] == 10
    assert "model: sharded (in the shard files)" in _main(capsys, "inspect", folder)[1]

    exported = run_helios("export", folder, "-o", tmp_path / "full.pth", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    full = json.loads(_main(capsys, "inspect", tmp_path / "full.pth", "--json")[1])
    mine = json.loads(_main(capsys, "inspect", trained, "--json")[1])
    assert full["model"]["networks"] == mine["model"]["networks"]
    original, restored = (
        _load(trained)["model"]["_net"],
        _load(tmp_path / "full.pth")["model"]["_net"],
    )
    assert all(torch.equal(original[k], restored[k]) for k in original)
    status, _, err = _main(capsys, "export", trained)
    assert status == 1
    assert "error: " in err
    assert "is not a sharded checkpoint (a .dcp folder): it is one file already" in err


def test_export_the_networks_of_a_checkpoint_to_onnx(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    onnx = pytest.importorskip("onnx")
    config = trained.parents[2] / "mlp.yaml"
    status, out, err = _main(
        capsys, "export", trained, "--onnx", tmp_path / "mlp.onnx", "--config", config
    )
    assert status == 0, err
    assert f"wrote {tmp_path / 'mlp.onnx'}" in out
    graph = onnx.load(str(tmp_path / "mlp.onnx")).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    assert [16, 64] in weights.values()  # the trained network, checked against PyTorch
    other = mlp_config(tmp_path, model="NoExport")
    assert (
        main(["export", str(trained), "--onnx", str(tmp_path / "x.onnx"), "--config", other]) == 2
    )
    message = "error: model: NoExport defines no ONNX export: give it a method onnx_exports()"
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["export", str(trained), "--onnx", str(tmp_path / "y.onnx")])
    assert "export --onnx needs the run's --config" in capsys.readouterr().err


def _write_helios_127(source: pathlib.Path, target: pathlib.Path) -> None:
    """The layout Helios 1.2.7 wrote: no ranks, its rng keys, TrainingState under its old name."""
    contents = _load(source)
    old = {
        "version": "1.2.7",
        "training_state": contents["training_state"],
        "model": contents["model"],
        "rng": {k: contents["rng"][k] for k in ("torch", "rand", "numpy")},
    }
    original = TrainingState.__module__
    TrainingState.__module__ = "helios.trainer"
    try:
        torch.save(old, target)
    finally:
        TrainingState.__module__ = original


def test_inspect_a_helios_127_checkpoint_and_migrate_it(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    _write_helios_127(trained, folder / NAME)
    summary = _inspect_json(folder / NAME, tmp_path)
    assert summary["written_by"] == "1.2.7"
    assert summary["layout"] == "helios 1.x (no per-rank entries)"
    assert summary["position"]["current_iteration"] == 10
    assert summary["config"] is None and summary["environment"] is None
    text = _main(capsys, "inspect", folder / NAME)[1]
    assert "config: not recorded" in text
    assert "environment: not recorded (written by an older helios)" in text

    status, _, err = _main(capsys, "migrate", folder)
    assert status == 0, err
    assert json.loads(_main(capsys, "inspect", folder / NAME, "--json")[1])["layout"] == "current"


def test_inspect_a_damaged_or_foreign_file_is_a_clear_error(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(trained.read_bytes()[: trained.stat().st_size // 2])
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    nested = tmp_path / "list.pth"
    torch.save([1, 2, 3], nested)
    no_contents = tmp_path / "empty.dcp"
    no_contents.mkdir()
    cases = {
        truncated: "is not a readable checkpoint",
        text: "not a torch.save archive",
        nested: "is not a helios checkpoint: it holds a list, not a dict",
        tmp_path / "missing.pth": "no checkpoint at",
        no_contents: "no checkpoint file at",
        tmp_path: "is a folder but not a sharded checkpoint",
    }
    for path, message in cases.items():
        assert main(["inspect", str(path)]) == 1, path
        err = capsys.readouterr().err
        assert message in err, (path, err)
    # The installed command says the same, without a traceback.
    result = run_helios("inspect", truncated, cwd=tmp_path)
    assert result.returncode == 1
    assert "is not a readable checkpoint" in result.stderr
    assert "Traceback" not in result.stderr


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, ("touch pwned",))


def test_inspect_never_unpickles_code_and_allows_own_types_by_name(
    trained: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    contents = _load(trained)
    contents["model"]["exploit"] = _Exploit()
    torch.save(contents, tmp_path / "hostile.pth")
    result = run_helios("inspect", tmp_path / "hostile.pth", cwd=tmp_path)
    assert result.returncode == 1
    assert "not allowed for safe loading (posix.system)" in result.stderr
    assert not (tmp_path / "pwned").exists()

    import_modules([str(HERE / "mlp_parts.py")], HERE)  # as a config's imports do
    import mlp_parts

    contents = _load(trained)
    contents["model"]["marker"] = mlp_parts.Marker(3)
    torch.save(contents, tmp_path / "own.pth", pickle_module=pickle)
    status, _, err = _main(capsys, "inspect", tmp_path / "own.pth")
    assert status == 1
    assert "not allowed for safe loading (mlp_parts.Marker)" in err
    assert "--allow-type module.Class" in err
    shutil.copy(HERE / "mlp_parts.py", tmp_path / "mlp_parts.py")
    allowed = run_helios(
        "inspect", tmp_path / "own.pth", "--allow-type", "mlp_parts.Marker", cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "model entry marker: <mlp_parts.Marker object" in allowed.stdout


def test_a_pyblaze_run_is_inspectable(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import pyblaze.nn as xnn

    class Net(xnn.Estimator, nn.Module):
        __engine__ = xnn.SupervisedEngine

        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x)

    torch.manual_seed(0)
    data = TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,)))
    model = Net()
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        model.fit(
            DataLoader(data, batch_size=16), epochs=1, loss=nn.CrossEntropyLoss(),
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1), gpu=False,
            trainer_options={"chkpt_root": tmp_path, "chkpt_frequency": 1},
        )  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(deterministic)
    (path,) = (tmp_path / "pyblaze_Net").glob("*.pth")
    capsys.readouterr()
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["position"]["global_epoch"] == 1
    assert summary["model"]["networks"]["module"]["fc.weight"]["shape"] == [2, 4]
    assert summary["model"]["optimizers"]["optimizers.0"]["parameters"] == 2
    assert summary["environment"]["torch"] == str(torch.__version__)  # every checkpoint has it
