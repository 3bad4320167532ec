from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

import helios.core.cuda
import helios.plugins as hlp
from helios.plugins.plugin import validate_plugins


class FakeTrainer:
    def __init__(self) -> None:
        self.plugins: dict[str, hlp.Plugin] = {}
        self.train_exceptions: list[type[Exception]] = []
        self.test_exceptions: list[type[Exception]] = []


class SimplePlugin(hlp.Plugin):
    def __init__(self, plug_id: str = "simple", **overrides: bool) -> None:
        super().__init__(plug_id)
        for name, value in overrides.items():
            setattr(self.unique_overrides, name, value)

    def setup(self) -> None:
        pass

    def configure_trainer(self, trainer: Any) -> None:
        self._register_in_trainer(trainer)


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let CUDAPlugin be built on a machine without CUDA."""
    monkeypatch.setattr(helios.core.cuda, "requires_cuda_support", lambda: None)


def make_cuda_plugin(device: str) -> hlp.CUDAPlugin:
    plugin = hlp.CUDAPlugin()
    plugin.device = torch.device(device)
    return plugin


def test_plugin_unique_overrides_defaults() -> None:
    overrides = hlp.UniquePluginOverrides()
    assert dataclasses.asdict(overrides) == {
        "training_batch": False,
        "validation_batch": False,
        "testing_batch": False,
        "should_training_stop": False,
    }


def test_plugin_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        hlp.Plugin("x")  # type: ignore[abstract]


def test_plugin_properties() -> None:
    plugin = SimplePlugin("my-id")
    assert plugin.plug_id == "my-id"
    assert plugin.unique_overrides == hlp.UniquePluginOverrides()
    assert not plugin.is_distributed
    assert plugin.map_loc == ""
    assert plugin.rank == 0
    with pytest.raises(AttributeError):
        plugin.plug_id = "other"  # type: ignore[misc]
    with pytest.raises(AssertionError):
        _ = plugin.device
    with pytest.raises(RuntimeError, match=r"trainer has not been set on plug-in 'my-id'"):
        _ = plugin.trainer

    trainer = FakeTrainer()
    plugin.is_distributed = True
    plugin.map_loc = {"cuda:0": "cpu"}
    plugin.device = torch.device("cpu")
    plugin.rank = 2
    plugin.trainer = trainer  # type: ignore[assignment]
    assert plugin.is_distributed
    assert plugin.map_loc == {"cuda:0": "cpu"}
    assert plugin.device == torch.device("cpu")
    assert plugin.rank == 2
    assert plugin.trainer is trainer


def test_plugin_unique_overrides_are_mutable() -> None:
    plugin = SimplePlugin()
    plugin.unique_overrides.training_batch = True
    assert plugin.unique_overrides.training_batch


def test_plugin_default_hooks() -> None:
    plugin = SimplePlugin()
    batch = [torch.zeros(1)]
    assert plugin.process_training_batch(batch, None) is batch  # type: ignore[arg-type]
    assert plugin.process_validation_batch(batch, 0) is batch
    assert plugin.process_testing_batch(batch, 0) is batch
    assert plugin.should_training_stop() is False
    assert plugin.state_dict() == {}
    plugin.load_state_dict({"a": 1})
    plugin.on_training_start()
    plugin.on_training_end()
    plugin.on_validation_start(validation_cycle=0)
    plugin.on_validation_end(validation_cycle=0)
    plugin.on_testing_start()
    plugin.on_testing_end()
    trainer = FakeTrainer()
    hlp.Plugin.configure_trainer(plugin, trainer)  # type: ignore[arg-type]
    plugin.configure_model(None)  # type: ignore[arg-type]
    assert trainer.plugins == {}


def test_plugin_register_in_trainer() -> None:
    trainer = FakeTrainer()
    first = SimplePlugin("first", training_batch=True)
    second = SimplePlugin("second", validation_batch=True)
    first.configure_trainer(trainer)
    second.configure_trainer(trainer)
    assert trainer.plugins == {"first": first, "second": second}


def test_plugin_register_duplicate_id_raises() -> None:
    trainer = FakeTrainer()
    SimplePlugin("dup").configure_trainer(trainer)
    with pytest.raises(KeyError, match="a plug-in with id 'dup' has already been registered"):
        SimplePlugin("dup").configure_trainer(trainer)
    assert len(trainer.plugins) == 1


@pytest.mark.parametrize(
    "flag", ["training_batch", "validation_batch", "testing_batch", "should_training_stop"]
)
def test_plugin_register_unique_override_clash_raises(flag: str) -> None:
    trainer = FakeTrainer()
    first = SimplePlugin("first", **{flag: True})
    first.configure_trainer(trainer)
    with pytest.raises(
        ValueError,
        match=(
            f"plug-in 'second' sets the unique override '{flag}', which plug-in 'first' "
            "already sets"
        ),
    ):
        SimplePlugin("second", **{flag: True}).configure_trainer(trainer)
    assert trainer.plugins == {"first": first}


def test_plugin_validate_plugins() -> None:
    ok = {
        "a": SimplePlugin("a", training_batch=True),
        "b": SimplePlugin("b", testing_batch=True),
        "c": SimplePlugin("c"),
    }
    validate_plugins(ok)

    clashing = {
        "a": SimplePlugin("a", should_training_stop=True),
        "b": SimplePlugin("b", should_training_stop=True),
    }
    with pytest.raises(ValueError, match="'b' sets the unique override 'should_training_stop'"):
        validate_plugins(clashing)


def test_plugin_append_exceptions() -> None:
    trainer = FakeTrainer()
    plugin = SimplePlugin()

    plugin._append_train_exceptions(ValueError, trainer)  # type: ignore[arg-type]
    plugin._append_train_exceptions([RuntimeError, ValueError], trainer)  # type: ignore[arg-type]
    assert trainer.train_exceptions == [ValueError, RuntimeError]
    assert trainer.test_exceptions == []

    plugin._append_test_exceptions([KeyError], trainer)  # type: ignore[arg-type]
    plugin._append_test_exceptions(KeyError, trainer)  # type: ignore[arg-type]
    assert trainer.test_exceptions == [KeyError]
    assert trainer.train_exceptions == [ValueError, RuntimeError]

    with pytest.raises(TypeError, match="expected 'exc' to hold exception types, got 'oops'"):
        plugin._append_train_exceptions("oops", trainer)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got <class 'int'>"):
        plugin._append_test_exceptions([int], trainer)  # type: ignore[list-item, arg-type]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_plugin_cuda_requires_cuda() -> None:
    # The plug-in is named, with the fix, as gpus=[0] does.
    with pytest.raises(RuntimeError, match=r"CUDAPlugin\(\) moves every batch to a CUDA device"):
        hlp.CUDAPlugin()
    with pytest.raises(RuntimeError, match="Leave the plug-in out to train on the CPU") as info:
        hlp.create_plugin("CUDAPlugin")
    assert "expected CUDA support" in str(info.value.__cause__)


@pytest.mark.usefixtures("fake_cuda")
def test_plugin_cuda_overrides_and_registration() -> None:
    plugin = hlp.create_plugin("CUDAPlugin")
    assert isinstance(plugin, hlp.CUDAPlugin)
    assert hlp.CUDAPlugin.plugin_id == "cuda"
    assert plugin.plug_id == "cuda"
    assert plugin.unique_overrides == hlp.UniquePluginOverrides(
        training_batch=True, validation_batch=True, testing_batch=True
    )
    plugin.setup()

    trainer = FakeTrainer()
    plugin.configure_trainer(trainer)  # type: ignore[arg-type]
    assert trainer.plugins[hlp.CUDAPlugin.plugin_id] is plugin

    with pytest.raises(ValueError, match="'training_batch', which plug-in 'cuda'"):
        SimplePlugin("mover", training_batch=True).configure_trainer(trainer)


def test_plugin_registry() -> None:
    assert str(hlp.PLUGIN_REGISTRY) == "plug-in"
    assert "CUDAPlugin" in hlp.PLUGIN_REGISTRY
    with pytest.raises(KeyError, match="NoSuchPlugin"):
        hlp.create_plugin("NoSuchPlugin")


@pytest.mark.usefixtures("fake_cuda")
def test_plugin_cuda_moves_collections() -> None:
    # The meta device makes the move observable without a GPU.
    plugin = make_cuda_plugin("meta")

    moved = plugin.process_training_batch(torch.ones(2), None)  # type: ignore[arg-type]
    assert moved.device.type == "meta"

    batch_list = [torch.ones(2), "name", 3, [torch.ones(1)]]
    moved_list = plugin.process_validation_batch(batch_list, 0)
    assert moved_list is batch_list
    assert moved_list[0].device.type == "meta"
    assert moved_list[1:3] == ["name", 3]
    assert moved_list[3][0].device.type == "cpu"  # nested containers are not searched

    batch_tuple = (torch.ones(2), torch.zeros(3), None)
    moved_tuple = plugin.process_testing_batch(batch_tuple, 0)
    assert isinstance(moved_tuple, tuple)
    assert [t.device.type for t in moved_tuple[:2]] == ["meta", "meta"]
    assert moved_tuple[2] is None
    assert batch_tuple[0].device.type == "cpu"

    batch_dict = {"x": torch.ones(2), "id": "abc"}
    moved_dict = plugin.process_training_batch(batch_dict, None)  # type: ignore[arg-type]
    assert moved_dict is batch_dict
    assert moved_dict["x"].device.type == "meta"
    assert moved_dict["id"] == "abc"


@pytest.mark.usefixtures("fake_cuda")
def test_plugin_cuda_uses_non_blocking_copies(monkeypatch: pytest.MonkeyPatch) -> None:
    plugin = make_cuda_plugin("cpu")
    calls: list[dict[str, Any]] = []
    original_to = torch.Tensor.to

    def recording_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(kwargs)
        return original_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    plugin.process_training_batch([torch.ones(1), torch.ones(1)], None)  # type: ignore[arg-type]
    assert calls == [{"non_blocking": True}, {"non_blocking": True}]


@pytest.mark.usefixtures("fake_cuda")
@pytest.mark.parametrize("batch", ["text", 3, {1, 2}])
def test_plugin_cuda_unknown_batch_type_raises(batch: Any) -> None:
    plugin = make_cuda_plugin("cpu")
    with pytest.raises(
        TypeError, match=f"cannot move a batch of type {type(batch).__name__}; expected"
    ):
        plugin.process_training_batch(batch, None)  # type: ignore[arg-type]


@pytest.mark.usefixtures("fake_cuda")
def test_plugin_cuda_subclass_overrides_move() -> None:
    class NestedCUDAPlugin(hlp.CUDAPlugin):
        def _move_collection_to_device(self, batch: Any) -> Any:
            for value in batch.values():
                for i in range(len(value)):
                    value[i] = value[i].to(self.device)
            return batch

    plugin = NestedCUDAPlugin()
    plugin.device = torch.device("meta")
    batch = {"x": [torch.ones(1), torch.ones(2)]}
    moved = plugin.process_validation_batch(batch, 0)
    assert [t.device.type for t in moved["x"]] == ["meta", "meta"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [GPUs>=1]")
def test_plugin_cuda_moves_to_gpu() -> None:
    plugin = make_cuda_plugin("cuda:0")
    batch = plugin.process_training_batch(
        {"x": torch.ones(4), "y": [torch.ones(1)]},
        None,  # type: ignore[arg-type]
    )
    assert batch["x"].device == torch.device("cuda:0")
    assert batch["y"][0].device.type == "cpu"
    moved = plugin.process_testing_batch((torch.ones(2), 1), 0)
    assert moved[0].is_cuda
    assert moved[1] == 1
