"""The sharding helpers that need no process group, and sharded checkpoint folders on disk.

The training side (2 and 3 processes under torchrun) is in
``tests/helios/distributed/test_sharding.py``. Here one process writes checkpoint folders
through the same functions the trainer calls, with Distributed Checkpoint in its
single-process mode.
"""

from __future__ import annotations

import os
import pathlib
import warnings
from typing import Any

import pytest
import torch
from torch import nn

import helios.model as hlm
import helios.trainer as hlt
from helios.model import sharding
from helios.trainer.checkpoint import io as checkpoints
from helios.trainer.checkpoint import layout, sharded, storage
from helios.trainer.state import TrainingState


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.blocks = nn.ModuleList([Block(), Block(), nn.ReLU()])
        self.head = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 1))


def test_default_layers_are_the_entries_of_the_outermost_containers() -> None:
    net = Net()
    assert sharding.default_layers(net) == [
        net.blocks[0],
        net.blocks[1],
        net.head[0],
        net.head[1],
    ]
    flat = nn.Module()
    flat.a = nn.Linear(2, 2)
    flat.b = nn.ReLU()
    assert sharding.default_layers(flat) == [flat.a]
    sequential = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 1))
    assert sharding.default_layers(sequential) == [sequential[0], sequential[2]]


def test_layers_by_type_or_function_and_bad_selectors() -> None:
    net = Net()
    assert sharding._selected_layers(net, Block) == [net.blocks[0], net.blocks[1]]
    assert sharding._selected_layers(net, [Block, nn.Sequential]) == [
        net.blocks[0],
        net.blocks[1],
        net.head,
    ]
    chosen = sharding._selected_layers(net, lambda m: m is net.embed)
    assert chosen == [net.embed]
    with pytest.raises(TypeError, match=r"invalid layers=\['Block'\]"):
        sharding._selected_layers(net, ["Block"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"invalid layers=\(\)"):
        sharding._selected_layers(net, ())


def test_mixed_precision_policies() -> None:
    assert sharding.mixed_precision_policy("32") is None
    bf16 = sharding.mixed_precision_policy("bf16-mixed")
    assert bf16 is not None
    assert (bf16.param_dtype, bf16.reduce_dtype) == (torch.bfloat16, torch.float32)
    fp16 = sharding.mixed_precision_policy("fp16-mixed")
    assert fp16 is not None
    assert fp16.param_dtype == torch.float16
    with pytest.raises(ValueError, match=r"invalid precision='16'"):
        sharding.mixed_precision_policy("16")


def test_shard_network_refuses_what_is_not_a_module() -> None:
    with pytest.raises(TypeError, match=r"invalid network=\[1\]: expected a torch.nn.Module"):
        sharding.shard_network([1])  # type: ignore[arg-type]


def test_shard_network_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        sharding.shard_network(Net())


def test_model_shard_network_is_a_no_op_in_one_process() -> None:
    class OneProcess(hlm.Model):
        def setup(self, fast_init: bool = False) -> None:
            self.net = self.shard_network(Net())

    model = OneProcess("one")
    model.setup()
    assert type(model.net) is Net
    assert not sharding.is_sharded_network(model.net)


@pytest.mark.parametrize(
    "make",
    [
        lambda params: torch.optim.AdamW(params, lr=0.1, weight_decay=0.5),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.1),
        lambda params: torch.optim.Adam(params, lr=torch.tensor(0.1)),
    ],
)
def test_initialize_optimizer_state_creates_the_state_and_keeps_the_weights(make: Any) -> None:
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    optimizer = make(net.parameters())
    learning_rate = optimizer.param_groups[0]["lr"]

    assert sharding.initialize_optimizer_state(optimizer)

    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert len(optimizer.state) == len(list(net.parameters()))
    assert optimizer.param_groups[0]["lr"] is learning_rate
    assert all(p.grad is None for p in net.parameters())
    assert not sharding.initialize_optimizer_state(optimizer)


def _make_sharded_checkpoint(
    folder: pathlib.Path, iteration: int, model_state: Any
) -> pathlib.Path:
    """Write a sharded checkpoint through the trainer's own steps, on one process."""
    state = TrainingState(current_iteration=iteration, global_iteration=iteration)
    path = folder / f"net_epoch_1_iter_{iteration}{layout.SHARDED_SUFFIX}"
    checkpoints.prepare_temporary_folder(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sharded.write_shards({"model": model_state}, path)
    contents = {
        "version": "0.1.0",
        "training_state": state,
        "rng": {},
        layout.SHARDED_PARTS_KEY: ["model"],
    }
    checkpoints.commit_sharded(contents, path)
    return path


def test_sharded_folders_are_found_validated_and_skipped_when_damaged(
    tmp_path: pathlib.Path,
) -> None:
    hlt.register_trainer_types_for_safe_load()
    older = _make_sharded_checkpoint(tmp_path, 1, {"w": torch.ones(8)})
    newer = _make_sharded_checkpoint(tmp_path, 2, {"w": torch.full((8,), 2.0)})
    assert hlt.find_last_checkpoint(tmp_path) == newer
    assert checkpoints.read_sharded_contents(newer)["sharded_parts"] == ["model"]

    shard = next(newer.glob("*.distcp"))
    os.truncate(shard, shard.stat().st_size - 1)
    with pytest.warns(RuntimeWarning, match=rf"checkpoint {newer} could not be read.*truncated"):
        found = storage.load_newest_valid_checkpoint(tmp_path)
    assert found is not None
    assert found[0] == older

    (older / layout.CONTENTS_NAME).unlink()
    with pytest.raises(ValueError, match=r"helios\.pth is missing"):
        checkpoints.read_sharded_contents(older)


def test_commit_replaces_a_folder_saved_at_the_same_position(tmp_path: pathlib.Path) -> None:
    _make_sharded_checkpoint(tmp_path, 3, {"w": torch.zeros(2)})
    path = _make_sharded_checkpoint(tmp_path, 3, {"w": torch.ones(2)})
    assert torch.equal(sharded.load_full_state(path)["model"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_interrupted_saves_are_cleaned_up(tmp_path: pathlib.Path) -> None:
    kept = _make_sharded_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    unfinished = layout.temporary_folder(tmp_path / "net_epoch_1_iter_3.dcp")
    unfinished.mkdir()
    (unfinished / "__0_0.distcp").write_bytes(b"partial")

    checkpoints.remove_temporary_files(tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]


class Payload:
    """An object whose unpickling would run code (create a file)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def test_objects_in_shards_are_unpickled_safely(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    state = {"w": torch.ones(2), "extra": Payload(marker)}
    path = _make_sharded_checkpoint(tmp_path / "chkpt", 1, state)
    with pytest.raises(Exception, match="Weights only load failed"):
        sharded.load_full_state(path)
    assert not marker.exists()


def test_export_rejects_a_path_that_is_not_a_sharded_checkpoint(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "net_epoch_1_iter_1.pth"
    file.write_bytes(b"")
    with pytest.raises(ValueError, match=r"invalid path=.*net_epoch_1_iter_1.pth.*ending in .dcp"):
        hlt.export_full_checkpoint(file)


def test_export_writes_a_one_file_checkpoint_of_full_tensors(tmp_path: pathlib.Path) -> None:
    net = Net()
    optimizer = torch.optim.AdamW(net.parameters())
    sharding.initialize_optimizer_state(optimizer)
    state = {"net": net.state_dict(), "optimizer": optimizer.state_dict()}
    path = _make_sharded_checkpoint(tmp_path, 4, state)

    exported = hlt.export_full_checkpoint(path)

    assert exported == tmp_path / "net_epoch_1_iter_4.pth"
    contents = torch.load(exported, weights_only=True)
    assert contents["training_state"].current_iteration == 4
    restored = Net()
    restored.load_state_dict(contents["model"]["net"])
    assert all(torch.equal(a, b) for a, b in zip(restored.parameters(), net.parameters()))
    fresh = torch.optim.AdamW(restored.parameters())
    fresh.load_state_dict(contents["model"]["optimizer"])
    assert len(fresh.state) == len(optimizer.state)  # integer parameter keys came back
