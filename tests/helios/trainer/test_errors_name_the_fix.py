"""Errors a newcomer meets say what to do, not only what broke.

Each case is what a user of Lightning, Keras or the Hugging Face Trainer types on a first
try, through the public API.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core import Registry


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_epochs": 3}, r'max_epochs \(use total_steps \(with train_unit="epoch"'),
        ({"epochs": 3}, r"epochs \(use total_steps"),
        ({"max_steps": 100}, r'max_steps \(use total_steps with train_unit="iteration"\)'),
        ({"lr": 0.1}, r"lr \(the learning rate belongs to the optimizer"),
        ({"learning_rate": 0.1}, r"learning_rate \(the learning rate belongs to the optimizer"),
        ({"fp16": True}, r'fp16 \(use precision="fp16-mixed"'),
        ({"accumulate_grad_batches": 2}, r"accumulate_grad_batches \(use accumulation_steps"),
        ({"check_val_every_n_epoch": 1}, r"\(use valid_frequency\)"),
        ({"batch_size": 32}, r"batch_size \(the batch size is a loader setting"),
        ({"callbacks": []}, r"callbacks \(use plug-ins"),
        ({"patience": 3}, r"patience \(use early_stop_cycles\)"),
        ({"seed": 1}, r"seed \(use random_seed\)"),
        ({"precison": "32"}, r"precison \(did you mean precision\?\)"),
        ({"total_step": 3}, r"total_step \(did you mean total_steps\?\)"),
        ({"zzz": 1}, r"unknown argument\(s\): zzz\. The Trainer's arguments are listed"),
    ],
)
def test_unknown_trainer_arguments_name_the_argument_meant(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        hlt.Trainer(**kwargs)


def test_the_trainer_signature_stays_the_real_one() -> None:
    parameters = inspect.signature(hlt.Trainer).parameters
    assert list(parameters)[:3] == ["run_name", "train_unit", "total_steps"]
    assert "kwargs" not in parameters and "monitor" in parameters


@pytest.mark.parametrize(
    ("precision", "error", "meant"),
    [
        ("16-mixed", ValueError, "fp16-mixed"),
        ("bf16", ValueError, "bf16-mixed"),
        ("32-true", ValueError, "32"),
        (16, TypeError, "fp16-mixed"),
        (32, TypeError, "32"),
    ],
)
def test_precision_spellings_of_other_frameworks_name_ours(
    precision: Any, error: type[Exception], meant: str
) -> None:
    with pytest.raises(error, match=f'did you mean precision="{meant}"'):
        hlt.Trainer(precision=precision)


class _Data(hld.DataModule):
    def setup(self) -> None:
        data = TensorDataset(torch.randn(8, 2), torch.randn(8, 1))
        self._train_dataset = self._create_dataset(data, hld.DataLoaderParams(batch_size=4))


class _Model(hlm.Model):
    def __init__(self) -> None:
        super().__init__("net")

    def setup(self, fast_init: bool = False) -> None:
        self.net = torch.nn.Linear(2, 1)


def test_a_model_that_forgot_super_init_is_told_to_call_it() -> None:
    class Forgetful(hlm.Model):
        def __init__(self) -> None:
            self.width = 3  # no super().__init__("name")

        def setup(self, fast_init: bool = False) -> None:
            pass

    trainer = hlt.Trainer(total_steps=1, use_cpu=True)
    fix = r'Forgetful.__init__ did not call super\(\).__init__\(save_name\).*super\(\).__init__\("'
    with pytest.raises(TypeError, match=fix):
        trainer.fit(Forgetful(), _Data())
    with pytest.raises(AttributeError, match=fix):
        _ = Forgetful().save_name  # read anywhere: the same fix
    model = _Model()
    with pytest.raises(AttributeError, match="'_Model' object has no attribute 'nothing'"):
        _ = model.nothing  # an initialised model: the usual error


def test_a_datamodule_that_forgot_super_init_is_told_to_call_it() -> None:
    class Forgetful(_Data):
        def __init__(self) -> None:
            self.root = "data"

    trainer = hlt.Trainer(total_steps=1, use_cpu=True)
    with pytest.raises(TypeError, match=r"Forgetful.__init__ did not call super\(\).__init__\(\)"):
        trainer.fit(_Model(), Forgetful())


def test_a_raw_dataloader_in_a_split_is_told_to_use_create_dataset() -> None:
    class LoaderData(hld.DataModule):
        def setup(self) -> None:
            self._train_dataset = DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)  # type: ignore[assignment]

    datamodule = LoaderData()
    datamodule.setup()
    with pytest.raises(
        TypeError,
        match=r"LoaderData._train_dataset holds a torch DataLoader: helios builds the loaders "
        r"itself.*self._train_dataset = self._create_dataset\(dataset, hld.DataLoaderParams",
    ):
        datamodule.train_dataloader()
    trainer = hlt.Trainer(total_steps=1, use_cpu=True)
    trainer.train_exceptions.append(TypeError)
    with pytest.raises(TypeError, match="holds a torch DataLoader"):
        trainer.fit(_Model(), LoaderData())


def test_registering_a_class_again_replaces_it_and_another_class_is_refused() -> None:
    registry = Registry("network")
    namespace: dict[str, Any] = {"__name__": "__main__", "registry": registry, "torch": torch}
    cell = "@registry.register\nclass MLP(torch.nn.Module):\n    pass\n"
    exec(compile(cell, "<notebook cell>", "exec"), namespace)
    first = namespace["MLP"]
    exec(compile(cell, "<notebook cell>", "exec"), namespace)  # the cell run again
    assert registry.get("MLP") is namespace["MLP"] is not first

    class MLP(torch.nn.Module):  # another class of that name, elsewhere
        pass

    with pytest.raises(
        ValueError,
        match=r"'MLP' already exists in the 'network' registry \(__main__.MLP\).*"
        r"register\(obj, suffix=...\)",
    ):
        registry.register(MLP)
    assert registry.register(MLP, suffix="v2") is MLP
