from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
from typing import Any

import pytest
import torch

import helios.model as hlm


class SimpleModel(hlm.Model):
    def __init__(self, save_name: str = "simple") -> None:
        super().__init__(save_name)
        self.setup_calls: list[bool] = []

    def setup(self, fast_init: bool = False) -> None:
        self.setup_calls.append(fast_init)


class MetricsPropertyModel(SimpleModel):
    @property
    def metrics(self) -> dict[str, Any]:
        return {"accuracy": 0.5}


class FakeState:
    running_iter = 1


def test_model_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        hlm.Model("x")  # type: ignore[abstract]


def test_model_constructor_defaults() -> None:
    model = SimpleModel("my-model")
    assert model.save_name == "my-model"
    assert not model.is_distributed
    assert model.map_loc == ""
    assert model.rank == 0
    assert model._loss_items == {}
    assert model._running_losses == {}
    assert model._val_scores == {}
    assert model._test_scores == {}
    assert model.metrics == {}


def test_model_save_name_is_read_only() -> None:
    model = SimpleModel()
    with pytest.raises(AttributeError):
        model.save_name = "other"  # type: ignore[misc]


def test_model_properties_are_settable() -> None:
    model = SimpleModel()
    model.is_distributed = True
    model.map_loc = {"cuda:0": "cpu"}
    model.device = torch.device("cpu")
    model.rank = 3
    trainer = object()
    model.trainer = trainer  # type: ignore[assignment]
    assert model.is_distributed
    assert model.map_loc == {"cuda:0": "cpu"}
    assert model.device == torch.device("cpu")
    assert model.rank == 3
    assert model.trainer is trainer


def test_model_trainer_unset_raises_runtime_error() -> None:
    model = SimpleModel("unset")
    with pytest.raises(RuntimeError, match=r"trainer has not been set on model 'unset'"):
        _ = model.trainer


def test_model_device_unset_raises() -> None:
    with pytest.raises(AssertionError):
        _ = SimpleModel().device


def test_model_table_cycle() -> None:
    model = SimpleModel()
    state = FakeState()

    model.on_training_batch_start(state)  # type: ignore[arg-type]
    assert len(model._loss_items) == 0

    model._loss_items["loss"] = torch.tensor(1.5)
    model.on_training_batch_end(state)  # type: ignore[arg-type]
    assert len(model._running_losses) == 1

    model.on_training_batch_start(state)  # type: ignore[arg-type]
    assert len(model._loss_items) == 0
    assert len(model._running_losses) == 1

    model._val_scores["acc"] = 1
    model.on_validation_start(0)
    assert len(model._val_scores) == 0

    model.on_validation_end(0)
    assert len(model._running_losses) == 0

    assert model.have_metrics_improved()

    model._test_scores["acc"] = 1
    model.on_testing_start()
    assert len(model._test_scores) == 0


def test_model_default_hooks() -> None:
    model = SimpleModel()
    with pytest.warns(UserWarning, match="found no network"):
        assert model.state_dict() == {}
    assert model.trained_state_dict(1, key=2) == {}
    assert model.append_metadata_to_chkpt_name("name_epoch_1") == "name_epoch_1"
    assert model.append_to_banner("banner") == "banner"
    assert model.have_metrics_improved() is True
    assert model.should_training_stop() is False
    with pytest.raises(KeyError, match=r"saved but not on the model: \['net'\]"):
        model.load_state_dict({"net": 1})
    model.load_for_testing()
    model.train()
    model.eval()
    model.on_training_start()
    model.on_training_epoch_start(1)
    model.train_step(None, FakeState())  # type: ignore[arg-type]
    model.on_training_epoch_end(1)
    model.on_training_end()
    model.on_validation_batch_start(0)
    model.valid_step(None, 0)
    model.on_validation_batch_end(0)
    model.on_testing_batch_start(0)
    model.test_step(None, 0)
    model.on_testing_batch_end(0)
    model.on_testing_end()
    # None of the no-op hooks touched the tables.
    assert model._loss_items == model._running_losses == {}
    assert model._val_scores == model._test_scores == model.metrics == {}


def test_model_running_losses_accumulate_detached_tensors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = SimpleModel()
    state = FakeState()
    weight = torch.tensor(2.0, requires_grad=True)

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("host-device synchronisation in the per-batch path")

    losses = [1.0, 2.5, 0.5]
    with monkeypatch.context() as m:
        m.setattr(torch.Tensor, "item", forbidden)
        m.setattr(torch.Tensor, "cpu", forbidden)
        m.setattr(torch.Tensor, "tolist", forbidden)
        for value in losses:
            model.on_training_batch_start(state)  # type: ignore[arg-type]
            loss = weight * value
            model._loss_items["loss"] = loss
            model._loss_items["skipped"] = None  # type: ignore[assignment]
            model.on_training_batch_end(state, should_log=False)  # type: ignore[arg-type]
            assert model._loss_items["loss"] is loss

    running = model._running_losses["loss"]
    assert isinstance(running, torch.Tensor)
    assert running.dim() == 0
    assert not running.requires_grad
    assert running.item() == pytest.approx(2.0 * sum(losses))
    assert "skipped" not in model._running_losses
    assert f"{running / 3:.3f}" == "2.667"


def test_model_running_loss_does_not_alias_the_loss() -> None:
    model = SimpleModel()
    loss = torch.tensor(1.0)
    model._loss_items["loss"] = loss
    model.on_training_batch_end(FakeState())  # type: ignore[arg-type]
    loss.add_(10.0)
    assert model._running_losses["loss"].item() == pytest.approx(1.0)  # type: ignore[union-attr]


def test_model_running_losses_continue_from_floats() -> None:
    model = SimpleModel()
    model._running_losses["loss"] = 1.0
    model._loss_items["loss"] = torch.tensor(2.0)
    model.on_training_batch_end(FakeState())  # type: ignore[arg-type]
    running = model._running_losses["loss"]
    assert isinstance(running, torch.Tensor)
    assert running.item() == pytest.approx(3.0)


def test_model_metrics_is_the_real_mutable_table() -> None:
    model = SimpleModel()
    model.metrics["accuracy"] = 0.9
    assert model.metrics == {"accuracy": 0.9}
    assert model.metrics is model.metrics
    model.on_validation_start(0)
    model.on_validation_end(0)
    model.on_training_batch_start(FakeState())  # type: ignore[arg-type]
    model.on_testing_start()
    assert model.metrics == {"accuracy": 0.9}


def test_model_metrics_property_can_be_overridden() -> None:
    model = MetricsPropertyModel()
    assert model.metrics == {"accuracy": 0.5}


def test_model_registry_create_model() -> None:
    @hlm.MODEL_REGISTRY.register
    class RegisteredTestModel(SimpleModel):
        pass

    model = hlm.create_model("RegisteredTestModel", save_name="from-registry")
    assert isinstance(model, RegisteredTestModel)
    assert model.save_name == "from-registry"
    assert "RegisteredTestModel" in hlm.MODEL_REGISTRY
    assert str(hlm.MODEL_REGISTRY) == "model"

    with pytest.raises(KeyError, match="NotAModel"):
        hlm.create_model("NotAModel")

    # Registering the same class again (a notebook cell run twice) replaces it quietly.
    assert hlm.MODEL_REGISTRY.register(RegisteredTestModel) is RegisteredTestModel
    assert hlm.MODEL_REGISTRY.get("RegisteredTestModel") is RegisteredTestModel

    def another() -> None:
        class RegisteredTestModel(SimpleModel):  # same name, another class
            pass

        hlm.MODEL_REGISTRY.register(RegisteredTestModel)

    with pytest.raises(ValueError, match=r"'RegisteredTestModel' already exists.*suffix="):
        another()


def test_model_find_pretrained_file(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "nets"
    root.mkdir()
    (root / "nets_other_v1.pth").touch()
    (root / "nets_gen_v2.txt").touch()
    target = root / "nets_gen_v1.pth"
    target.touch()

    assert hlm.find_pretrained_file(root, "gen") == target
    with pytest.raises(RuntimeError, match=r"pretrained network named 'missing' at .*nets"):
        hlm.find_pretrained_file(root, "missing")


_DISTRIBUTED_SCRIPT = """
import sys

import torch
import torch.multiprocessing as mp

import helios.model as hlm
from helios.core import distributed as dist


class DistModel(hlm.Model):
    def setup(self, fast_init: bool = False) -> None:
        pass


class State:
    running_iter = 1


def worker(rank: int, port: int, out: str) -> None:
    dist.init_dist("gloo", rank=rank, world_size=2, master_port=port)
    try:
        model = DistModel("dist")
        model.is_distributed = True
        weight = torch.tensor(1.0, requires_grad=True)
        for step in range(2):
            model.on_training_batch_start(State())
            # rank 0 sees losses 1 and 2, rank 1 sees 3 and 4.
            loss = weight * (1.0 + 2 * rank + step)
            model._loss_items["loss"] = loss
            model._loss_items["count"] = torch.tensor(rank + 1)
            model.on_training_batch_end(State())
            assert loss.item() == 1.0 + 2 * rank + step, "the user's loss was modified"
        torch.save(
            {
                "loss": model._loss_items["loss"],
                "count": model._loss_items["count"],
                "running": model._running_losses["loss"],
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.shutdown_dist()


if __name__ == "__main__":
    mp.spawn(worker, args=(int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_model_distributed_losses_are_averaged(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "dist_model.py"
    script.write_text(_DISTRIBUTED_SCRIPT)
    subprocess.run(
        [sys.executable, str(script), str(_free_port()), str(tmp_path)],
        check=True,
        timeout=110,
    )
    for rank in range(2):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        # Last batch: mean of 2 and 4; running sum: mean(1, 3) + mean(2, 4).
        assert result["loss"].item() == pytest.approx(3.0)
        assert not result["loss"].requires_grad
        assert result["count"].item() == pytest.approx(1.5)
        assert result["running"].item() == pytest.approx(5.0)
