"""fit's precision, gradient clipping and compile choices, through ``model.fit`` on the CPU."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import pyblaze.nn as xnn


class DtypeRecorder(xnn.Estimator, nn.Module):
    """Records the dtype of its hidden activations while it trains."""

    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.hidden = nn.Linear(4, 8)
        self.out = nn.Linear(8, 3)
        self.train_dtypes: set[torch.dtype] = set()
        self.eval_dtypes: set[torch.dtype] = set()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        (self.train_dtypes if self.training else self.eval_dtypes).add(h.dtype)
        return self.out(torch.relu(h))


def _data(n: int = 30) -> TensorDataset:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _fit(model: nn.Module, loss: nn.Module | None = None, **kwargs) -> xnn.History:
    data = _data()
    options = {
        "epochs": 1,
        "optimizer": torch.optim.SGD(model.parameters(), lr=1.0),
        "loss": loss or nn.CrossEntropyLoss(),
        "gpu": False,
        **kwargs,
    }
    return model.fit(DataLoader(data, batch_size=30), **options)


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [("32", torch.float32), ("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16)],
)
def test_precision_changes_the_dtype_of_the_training_forward(precision, dtype) -> None:
    model = DtypeRecorder()
    history = _fit(model, precision=precision, val_data=DataLoader(_data(), batch_size=10))
    assert model.train_dtypes == {dtype}
    # Validation computes its metrics in float32 at every precision.
    assert model.eval_dtypes == {torch.float32}
    assert len(history) == 1 and history.val_loss[0] == history.val_loss[0]  # not NaN
    # The engine forgets the run's precision afterwards.
    assert model.engine.precision.name == "32"


class Huge(nn.Module):
    """A loss whose gradients overflow float16 (not float32)."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(prediction.float(), target) * 1e10


class ScaleWatcher(xnn.TrainingCallback):
    def __init__(self, model: xnn.Estimator) -> None:
        self.model = model
        self.scales: list[float] = []
        self.skipped: list[bool] = []

    def after_batch(self, *args) -> None:
        precision = self.model.engine.precision
        self.scales.append(precision.scaler.get_scale())
        self.skipped.append(precision.last_step_skipped)


def test_fp16_scaler_skips_a_step_with_inf_gradients() -> None:
    model = DtypeRecorder()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    watcher = ScaleWatcher(model)
    _fit(model, loss=Huge(), precision="fp16-mixed", callbacks=[watcher])
    assert watcher.skipped == [True]
    assert watcher.scales[0] < 65536.0  # lowered from the initial scale
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
    # At 32 bits the same step is finite and changes the weights.
    model32 = DtypeRecorder()
    _fit(model32, loss=Huge(), precision="32")
    assert not torch.equal(model32.hidden.weight, before["hidden.weight"])


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_clip_norm_bounds_the_total_norm_of_the_step(precision) -> None:
    model = DtypeRecorder()
    before = [p.detach().clone() for p in model.parameters()]
    # SGD with lr=1 and no momentum: the step is minus the clipped gradient (fp16: below).
    _fit(model, loss=Huge(), precision=precision, clip_norm=0.01)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert torch.linalg.vector_norm(delta).item() == pytest.approx(0.01, rel=1e-3)


def test_clip_value_bounds_every_gradient_element() -> None:
    model = DtypeRecorder()
    before = [p.detach().clone() for p in model.parameters()]
    _fit(model, loss=Huge(), clip_value=0.001)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert delta.abs().max().item() == pytest.approx(0.001, rel=1e-5)


def test_fp16_clipping_unscales_before_clipping() -> None:
    # With a moderate loss the fp16 step is finite; the clipped step has the clip's norm, not
    # the norm of the scaled gradients.
    model = DtypeRecorder()
    before = [p.detach().clone() for p in model.parameters()]
    _fit(model, precision="fp16-mixed", clip_norm=0.01)
    delta = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert torch.linalg.vector_norm(delta).item() == pytest.approx(0.01, rel=1e-2)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"precision": "16"}, ValueError, r"invalid precision='16'"),
        ({"precision": 16}, TypeError, r"precision must be one of"),
        ({"clip_norm": 0}, ValueError, r"clip_norm must be None or a finite number > 0"),
        ({"clip_value": "1"}, TypeError, r"clip_value must be None or a number > 0"),
        ({"compile": 1}, TypeError, r"compile must be a bool"),
        (
            {"trainer_options": {"precision": "bf16-mixed"}},
            ValueError,
            r"trainer_options may not set \['precision'\]: pass fit's own argument",
        ),
    ],
)
def test_bad_precision_arguments_fail_before_training(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        _fit(DtypeRecorder(), **kwargs)


COMPILE_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import torch
from test_precision import DtypeRecorder, _fit, xnn

class CompileWatcher(xnn.TrainingCallback):
    def __init__(self):
        self.compiled = []
    def before_training(self, model, num_epochs):
        self.compiled.append(getattr(model, "_compiled_call_impl", None) is not None)

eager, compiled = DtypeRecorder(), DtypeRecorder()
watcher = CompileWatcher()
_fit(eager)
_fit(compiled, compile=True, callbacks=[watcher])
assert watcher.compiled == [True], watcher.compiled
assert compiled._compiled_call_impl is None  # uncompiled again afterwards
assert list(compiled.state_dict()) == list(eager.state_dict())
for key, value in compiled.state_dict().items():
    torch.testing.assert_close(value, eager.state_dict()[key], rtol=1e-4, atol=1e-5)
print("ok")
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_compile_compiles_the_model_for_the_run_only(tmp_path) -> None:
    # In a process of its own: torch.compile's worker threads and pools would make a later
    # fork (predict's Vectorizer) in the test process hang.
    script = tmp_path / "compile_job.py"
    script.write_text(COMPILE_SCRIPT.format(tests=str(pathlib.Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=280, env=env
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ok"
