import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn, optim

import helios.optim as hlo
from helios.optim.utils import OPTIMIZER_REGISTRY

REFERENCE_OPTIMIZERS = {
    "Adadelta",
    "Adagrad",
    "Adam",
    "AdamW",
    "SparseAdam",
    "Adamax",
    "ASGD",
    "LBFGS",
    "NAdam",
    "RAdam",
    "RMSprop",
    "Rprop",
    "SGD",
}


def test_registry_holds_every_torch_optimizer() -> None:
    assert hlo.OPTIMIZER_REGISTRY is OPTIMIZER_REGISTRY
    assert str(OPTIMIZER_REGISTRY) == "optimizer"
    exported = {
        name
        for name in optim.__all__
        if inspect.isclass(getattr(optim, name))
        and issubclass(getattr(optim, name), optim.Optimizer)
        and name != "Optimizer"
    }
    assert exported >= REFERENCE_OPTIMIZERS
    assert set(OPTIMIZER_REGISTRY.keys()) == exported
    for name, cls in OPTIMIZER_REGISTRY:
        assert cls is getattr(optim, name)


@pytest.mark.parametrize("name", ["Adafactor", "Muon"])
def test_newer_optimizers_are_registered(name: str) -> None:
    if not hasattr(optim, name):
        pytest.skip(f"torch {torch.__version__} has no optim.{name}")
    assert OPTIMIZER_REGISTRY.get(name) is getattr(optim, name)


def test_create_optimizer_builds_a_working_optimizer() -> None:
    weight = nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = hlo.create_optimizer("SGD", [weight], lr=0.5)
    assert isinstance(opt, optim.SGD)
    weight.sum().backward()
    opt.step()
    assert torch.equal(weight.detach(), torch.tensor([0.5, -2.5]))


def test_create_optimizer_unknown_name() -> None:
    with pytest.raises(KeyError, match=r"No object called 'Sgd'.*SGD"):
        hlo.create_optimizer("Sgd", [nn.Parameter(torch.zeros(1))])


@pytest.mark.slow
def test_building_blocks_import_no_heavy_dependency() -> None:
    code = (
        "import sys\n"
        "import helios.optim, helios.scheduler, helios.losses, helios.metrics\n"
        "import helios.nn, helios.nn.layers, helios.onnx\n"
        "heavy = {'tensorboard', 'optuna', 'onnx', 'onnxruntime', 'onnxscript',\n"
        "         'matplotlib', 'torchvision', 'skimage', 'sklearn', 'cv2'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
