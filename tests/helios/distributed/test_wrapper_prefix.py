"""A checkpoint of a wrapped network loads into the plain one, and the other way round.

The models save ``self._net.state_dict()`` themselves, as the distributed how-to and the
seeds do: under ``torchrun`` the network is a ``DistributedDataParallel`` and its keys
carry ``module.``; on one process they do not. A run started under ``torchrun`` continues
on one process and the other way round (real ``torchrun`` jobs on gloo), and a mismatch
that is only the prefix never advises deleting the run.
"""

from __future__ import annotations

import pathlib
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from torch import nn

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt

SCRIPT = textwrap.dedent(
    """
    import pathlib, sys, typing
    import torch
    import torch.utils.data as tud
    import helios.data as hld
    import helios.model as hlm
    import helios.trainer as hlt

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = (x.sum(1) > 0).long()

    class Data(hld.DataModule):
        def setup(self) -> None:
            params = hld.DataLoaderParams(batch_size=8, shuffle=True)
            self._train_dataset = self._create_dataset(tud.TensorDataset(x, y), params)

    class Wrapped(hlm.Model):
        def setup(self, fast_init: bool = False) -> None:
            self._net = torch.nn.Linear(4, 2).to(self.device)
            if self.is_distributed:
                self._net = torch.nn.parallel.DistributedDataParallel(self._net)
            self._optimizer = torch.optim.SGD(self._net.parameters(), lr=0.1)

        def state_dict(self) -> dict[str, typing.Any]:
            return {"net": self._net.state_dict(), "optimizer": self._optimizer.state_dict()}

        def load_state_dict(self, state_dict, fast_init: bool = False) -> None:
            self._net.load_state_dict(state_dict["net"])
            self._optimizer.load_state_dict(state_dict["optimizer"])

        def train_step(self, batch, state) -> None:
            inputs, labels = (t.to(self.device) for t in batch)
            self._optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(self._net(inputs), labels)
            loss.backward()
            self._optimizer.step()
            self._loss_items["loss"] = loss

    if __name__ == "__main__":
        trainer = hlt.Trainer(
            use_cpu=True, total_steps=int(sys.argv[1]), chkpt_frequency=1,
            chkpt_root=pathlib.Path("chkpt"), print_banner=False,
        )
        model = Wrapped("wrapped")
        if not trainer.fit(model, Data()):
            raise SystemExit(1)
    """
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def _launch(workdir: pathlib.Path, epochs: int, processes: int) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "train.py", str(epochs)]
    if processes > 1:
        command[1:1] = [
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={processes}",
            f"--master_port={_free_port()}",
        ]
    return subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=240)


def _net_keys(workdir: pathlib.Path, epoch: int) -> list[str]:
    hlt.register_trainer_types_for_safe_load()
    (path,) = (workdir / "chkpt" / "wrapped").glob(f"wrapped_epoch_{epoch}_iter_*.pth")
    return sorted(torch.load(path, weights_only=True)["model"]["net"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("first", "then"), [(2, 1), (1, 2)], ids=["torchrun-then-one", "one-then-torchrun"]
)
def test_a_run_continues_on_another_number_of_processes_through_the_wrapper(
    first: int, then: int, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    done = _launch(tmp_path, 1, first)
    assert done.returncode == 0, done.stderr[-3000:]
    wrapped = ["module.bias", "module.weight"]
    assert _net_keys(tmp_path, 1) == (wrapped if first > 1 else ["bias", "weight"])
    done = _launch(tmp_path, 2, then)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "CheckpointMismatchError" not in done.stderr
    assert "Resuming training from checkpoint" in done.stdout
    assert _net_keys(tmp_path, 2) == (wrapped if then > 1 else ["bias", "weight"])


# -- in one process, through DataParallel (the same prefix) -----------------------------------


class Data(hld.DataModule):
    def setup(self) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(32, 4, generator=generator)
        dataset = torch.utils.data.TensorDataset(x, (x.sum(1) > 0).long())
        self._train_dataset = self._create_dataset(dataset, hld.DataLoaderParams(batch_size=8))


class HandWritten(hlm.Model):
    """Saves its network's own ``state_dict`` (``module.`` keys when wrapped)."""

    def __init__(self, wrap: bool, hide: bool = False) -> None:
        super().__init__("hand")
        self.wrap, self.hide = wrap, hide

    def setup(self, fast_init: bool = False) -> None:
        net: nn.Module = nn.Linear(4, 2)
        self.net = nn.DataParallel(net) if self.wrap else net
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=0.1)
        if self.hide:  # two levels deep: out of helios's reach
            self.holder = {"deep": [self.net]}
            del self.net

    def _network(self) -> nn.Module:
        return self.holder["deep"][0] if self.hide else self.net

    def state_dict(self) -> dict[str, Any]:
        return {"net": self._network().state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self._network().load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        inputs, labels = batch
        self.optimizer.zero_grad()
        loss = nn.functional.cross_entropy(self._network()(inputs), labels)
        loss.backward()
        self.optimizer.step()


def _fit(root: pathlib.Path, model: HandWritten, epochs: int) -> bool:
    trainer = hlt.Trainer(
        use_cpu=True, total_steps=epochs, chkpt_frequency=1, chkpt_root=root, print_banner=False
    )
    return trainer.fit(model, Data())


@pytest.mark.parametrize(("saved", "loaded"), [(True, False), (False, True)])
def test_a_wrapped_networks_checkpoint_loads_into_the_plain_one_and_back(
    saved: bool, loaded: bool, tmp_path: pathlib.Path
) -> None:
    assert _fit(tmp_path, HandWritten(wrap=saved), 1)
    model = HandWritten(wrap=loaded)
    assert _fit(tmp_path, model, 2)
    reference = HandWritten(wrap=False)
    assert _fit(tmp_path / "reference", reference, 2)
    plain = model.net.module if loaded else model.net
    for key, value in reference.net.state_dict().items():
        assert torch.equal(plain.state_dict()[key], value), key


def test_a_prefix_only_mismatch_never_advises_deleting_the_run(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _fit(tmp_path, HandWritten(wrap=True, hide=True), 1)
    capsys.readouterr()
    assert _fit(tmp_path, HandWritten(wrap=False, hide=True), 2) is False
    err = capsys.readouterr().err
    assert "The keys differ only by the 'module.' prefix of DistributedDataParallel" in err
    assert "the checkpoint itself is intact" in err
    assert "delete" not in err.split("CheckpointMismatchError")[-1]
