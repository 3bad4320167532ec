"""The PyBlaze 1.1.6 names added to close the surface, tested against their described behaviour."""

from __future__ import annotations

import json
import multiprocessing
import pathlib
import signal
import time
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import pyblaze.nn as xnn
import pyblaze.nn.functional as X  # noqa: N812 - the name of the PyBlaze tutorial
from pyblaze.optim import LAMB
from pyblaze.utils import numpy as xnp
from pyblaze.utils import stdlib, stdmp
from pyblaze.utils import torch as xtorch

# -- StackedLSTMCell / StackedLSTM ------------------------------------------------------------


def test_the_lstm_cell_keeps_its_pyblaze_116_name() -> None:
    # PyBlaze 1.1.6's own tests import the private name.
    from pyblaze.nn.modules.lstm import LSTMCell, _LSTMCell

    assert _LSTMCell is LSTMCell


@pytest.mark.parametrize("cudnn", [True, False])
def test_stacked_lstm_cell_equals_torch_cells_with_the_same_weights(cudnn: bool) -> None:
    torch.manual_seed(0)
    stacked = xnn.StackedLSTMCell(5, [7, 3], cudnn=cudnn)
    reference = [nn.LSTMCell(5, 7), nn.LSTMCell(7, 3)]
    for ours, theirs in zip(stacked.cells, reference, strict=True):
        theirs.load_state_dict(ours.state_dict())  # same names and shapes as torch's cell
    x = torch.randn(4, 5)
    states = [(torch.randn(4, 7), torch.randn(4, 7)), (torch.randn(4, 3), torch.randn(4, 3))]
    for initial in (None, states):
        out, new_states = stacked(x, initial)
        h, expected = x, []
        for k, cell in enumerate(reference):
            h, c = cell(h, None if initial is None else initial[k])
            expected.append((h, c))
        torch.testing.assert_close(out, h)
        for (h1, c1), (h2, c2) in zip(new_states, expected, strict=True):
            torch.testing.assert_close(h1, h2)
            torch.testing.assert_close(c1, c2)
    assert states[0][0].shape == (4, 7)  # the given states are not replaced


@pytest.mark.parametrize("cudnn", [True, False])
@pytest.mark.parametrize("batch_first", [False, True])
def test_stacked_lstm_equals_torch_lstm(cudnn: bool, batch_first: bool) -> None:
    torch.manual_seed(1)
    ours = xnn.StackedLSTM(4, [6, 6], batch_first=batch_first, cudnn=cudnn)
    theirs = nn.LSTM(4, 6, num_layers=2, batch_first=batch_first)
    for layer, cell in enumerate(ours.stacked_cell.cells):
        for name, value in cell.state_dict().items():
            getattr(theirs, f"{name}_l{layer}").data.copy_(value)
    x = torch.randn(3, 5, 4)
    expected, _ = theirs(x)
    torch.testing.assert_close(ours(x), expected)
    last = expected[:, -1] if batch_first else expected[-1]
    torch.testing.assert_close(ours(x, return_sequence=False), last)


def test_stacked_lstm_without_cudnn_has_second_order_gradients() -> None:
    torch.manual_seed(2)
    lstm = xnn.StackedLSTM(2, [4, 3], cudnn=False)
    x = torch.randn(5, 2, 2, requires_grad=True)
    (grad,) = torch.autograd.grad(lstm(x).sum(), x, create_graph=True)
    (second,) = torch.autograd.grad(grad.pow(2).sum(), x)
    assert second.abs().sum() > 0
    with pytest.raises(ValueError, match="one \\(h, c\\) per layer \\(2\\), got 1"):
        lstm.stacked_cell(torch.randn(2, 2), [(torch.zeros(2, 4), torch.zeros(2, 4))])
    with pytest.raises(ValueError, match="hidden_sizes must name at least one layer"):
        xnn.StackedLSTMCell(2, [])


# -- WeightedBCELoss --------------------------------------------------------------------------


@pytest.mark.slow
def test_weighted_bce_loss() -> None:
    class_weight = pytest.importorskip("sklearn.utils.class_weight")
    torch.manual_seed(3)
    pred = torch.rand(12).clamp(0.01, 0.99)
    target = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0.0])
    torch.testing.assert_close(xnn.WeightedBCELoss()(pred, target), nn.BCELoss()(pred, target))

    labels = np.array([0, 0, 0, 1, 0, 1, 0, 0])
    expected_weights = class_weight.compute_class_weight("balanced", classes=np.arange(2), y=labels)
    loss = xnn.WeightedBCELoss(labels=labels)
    np.testing.assert_allclose(loss.weights.numpy(), expected_weights, rtol=1e-6)
    elementwise = nn.BCELoss(reduction="none")(pred, target)
    expected = elementwise * torch.as_tensor(expected_weights, dtype=torch.float)[target.long()]
    torch.testing.assert_close(loss(pred, target), expected.mean())

    ignoring = xnn.WeightedBCELoss(ignore_index=-1)
    masked = torch.where(torch.arange(12) < 4, torch.tensor(-1.0), target)
    torch.testing.assert_close(ignoring(pred, masked), nn.BCELoss()(pred[4:], target[4:]))
    assert "weights" in loss.state_dict()  # moves with the module
    with pytest.raises(ValueError, match=r"classes \[1\] have no sample"):
        xnn.WeightedBCELoss(labels=[0, 2])


# -- functional: gumbel_softmax, generate_noise; NoiseDataset ----------------------------------


def test_gumbel_softmax_samples_the_categorical_distribution() -> None:
    torch.manual_seed(4)
    logits = torch.tensor([0.0, 1.0, 2.0]).log_softmax(0).repeat(20000, 1)
    soft = X.gumbel_softmax(logits, tau=0.5)
    torch.testing.assert_close(soft.sum(-1), torch.ones(20000))
    frequencies = torch.bincount(soft.argmax(-1), minlength=3).float() / 20000
    torch.testing.assert_close(
        frequencies, torch.tensor([0.0, 1.0, 2.0]).softmax(0), atol=0.02, rtol=0
    )

    logits = torch.randn(8, 5, requires_grad=True)
    hard = X.gumbel_softmax(logits, hard=True, dim=1)
    assert set(hard.detach().unique().tolist()) == {0.0, 1.0}
    assert torch.equal(hard.detach().sum(1), torch.ones(8))
    (hard * torch.arange(5.0)).sum().backward()  # straight-through: gradients flow
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="tau must be greater than 0"):
        X.gumbel_softmax(logits, tau=0)


def test_generate_noise_and_noise_dataset() -> None:
    torch.manual_seed(5)
    normal = X.generate_noise((20000,))
    assert abs(normal.mean()) < 0.03 and abs(normal.std() - 1) < 0.03
    uniform = X.generate_noise(torch.Size([4, 5000]), "uniform")
    assert uniform.shape == (4, 5000) and uniform.min() >= -1 and uniform.max() < 1
    assert abs(uniform.mean()) < 0.03
    with pytest.raises(ValueError, match=r"invalid noise_type 'beta'; expected one of"):
        X.generate_noise((2,), "beta")

    loader = xnn.NoiseDataset("uniform", 6).loader(batch_size=8)
    batches = [batch for _, batch in zip(range(3), loader, strict=False)]
    assert [b.shape for b in batches] == [(8, 6)] * 3
    assert not torch.equal(batches[0], batches[1])
    assert all(b.min() >= -1 and b.max() < 1 for b in batches)
    with pytest.raises(ValueError, match="invalid noise_type"):
        xnn.NoiseDataset("gauss", 2)
    with pytest.raises(ValueError, match="dimension must be a positive int, got 0"):
        xnn.NoiseDataset("normal", 0)


# -- DataParallel -------------------------------------------------------------------------------


class _AutoEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(4, 2)
        self.decoder = nn.Linear(2, 4)
        self.latent_size = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def test_data_parallel_forwards_attributes_and_wraps_submodules() -> None:
    model = _AutoEncoder()
    wrapped = xnn.DataParallel(model)
    assert isinstance(wrapped, nn.DataParallel)
    assert wrapped.module is model and wrapped.latent_size == 2
    decoder = wrapped.decoder
    assert isinstance(decoder, xnn.DataParallel) and decoder.module is model.decoder
    assert wrapped.decoder is decoder  # one wrapper per submodule
    x = torch.randn(3, 4)
    torch.testing.assert_close(wrapped(x), model(x))
    torch.testing.assert_close(decoder(torch.ones(1, 2)), model.decoder(torch.ones(1, 2)))
    with pytest.raises(AttributeError):
        _ = wrapped.no_such_attribute


# -- LAMB ---------------------------------------------------------------------------------------


def test_lamb_step_follows_the_formula() -> None:
    p = nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    optimizer = LAMB([p], lr=0.1, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.01, lr_decay=0.5)
    grads = [torch.tensor([0.5, 0.1, -0.3]), torch.tensor([0.2, -0.4, 0.1])]
    m = torch.zeros(3)
    v = torch.zeros(3)
    expected = p.detach().clone()
    for t, g in enumerate(grads, start=1):
        p.grad = g.clone()
        optimizer.step()
        m = 0.8 * m + 0.2 * g
        v = 0.9 * v + 0.1 * g * g
        update = (m / (1 - 0.8**t)) / ((v / (1 - 0.9**t)).sqrt() + 1e-6) + 0.01 * expected
        trust = min(float(expected.norm() / update.norm()), 10.0)
        expected = expected - 0.1 / (1 + 0.5 * t) * trust * update
        torch.testing.assert_close(p.detach(), expected)
    state = optimizer.state_dict()
    fresh = LAMB([nn.Parameter(expected.clone())], lr=0.1)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"][0]["step"] == 2


def test_lamb_trains_a_regression() -> None:
    torch.manual_seed(6)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.3
    model = nn.Linear(3, 1)
    optimizer = LAMB(model.parameters(), lr=0.05)
    for _ in range(300):
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 1e-3
    for kwargs, match in (
        ({"lr": 0}, "lr must be greater than 0"),
        ({"betas": (0.9, 1.0)}, "betas must be two values in"),
        ({"eps": 0}, "eps must be greater than 0"),
        ({"weight_decay": -1}, "weight_decay must be >= 0"),
    ):
        with pytest.raises(ValueError, match=match):
            LAMB(model.parameters(), **kwargs)


# -- Synchronization / model sharing callbacks --------------------------------------------------


class _Net(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _data() -> Any:
    x = torch.randn(8, 2)
    return TensorDataset(x, x.sum(1, keepdim=True)).loader(batch_size=4)


class _WeightsAtEpochStart(xnn.TrainingCallback):
    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.seen: list[torch.Tensor] = []

    def before_training(self, model: nn.Module, num_epochs: int) -> None:
        self.model = model

    def before_epoch(self, current: int, num_iterations: int) -> None:
        assert self.model is not None
        self.seen.append(self.model.fc.weight.detach().clone())


def _train_in_child(push: Any, pull: Any, shared: nn.Module, out: str) -> None:
    model = _Net()
    history = model.fit(
        _data(),
        epochs=10,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[xnn.SynchronizationCallback(push, pull), xnn.ModelSharingCallback(shared)],
    )
    pathlib.Path(out).write_text(json.dumps({"epochs": len(history)}))


def test_synchronization_and_model_sharing_between_processes(tmp_path: pathlib.Path) -> None:
    context = multiprocessing.get_context("fork")
    push, pull = context.Queue(), context.Queue()
    shared = _Net()
    shared.share_memory()
    child = context.Process(
        target=_train_in_child, args=(push, pull, shared, str(tmp_path / "out.json"))
    )
    child.start()
    try:
        reports = []
        for _ in range(3):
            push.put(True)  # allow one epoch
            reports.append(pull.get(timeout=60))
        push.put(False)  # stop before the fourth
        reports.append(pull.get(timeout=60))
        child.join(60)
    finally:
        stdmp.terminate(child)
    assert reports == [True, True, True, False]
    assert child.exitcode == 0
    assert json.loads((tmp_path / "out.json").read_text()) == {"epochs": 3}


def test_model_sharing_loads_the_shared_weights_before_every_epoch() -> None:
    shared, model = _Net(), _Net()
    with torch.no_grad():
        shared.fc.weight.fill_(0.25)
    recorder = _WeightsAtEpochStart()
    model.fit(
        _data(),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[xnn.ModelSharingCallback(shared), recorder],
    )
    assert [w.tolist() for w in recorder.seen] == [[[0.25, 0.25]]] * 2
    assert not torch.equal(model.fc.weight, shared.fc.weight)  # training changed the copy


# -- NeptuneTracker -----------------------------------------------------------------------------


class _LegacyExperiment:
    def __init__(self) -> None:
        self.logged: list[tuple[str, float]] = []

    def log_metric(self, name: str, value: float) -> None:
        self.logged.append((name, value))


def _fit_tracked(tracker: xnn.NeptuneTracker) -> Any:
    torch.manual_seed(7)
    model = _Net()
    return model.fit(
        _data(),
        val_data=_data(),
        epochs=2,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        loss=nn.MSELoss(),
        callbacks=[tracker],
    )


def test_neptune_tracker_with_a_legacy_experiment() -> None:
    experiment = _LegacyExperiment()
    history = _fit_tracked(xnn.NeptuneTracker(experiment))
    names = [name for name, _ in experiment.logged]
    assert names == ["batch_train_loss"] * 2 + ["train_loss", "val_loss"] + [
        "batch_train_loss"
    ] * 2 + ["train_loss", "val_loss"]
    epoch_losses = [v for n, v in experiment.logged if n == "train_loss"]
    assert epoch_losses == pytest.approx(history.train_loss)
    with pytest.raises(TypeError, match=r"neptune run .* or have a log_metric"):
        xnn.NeptuneTracker(3)


@pytest.mark.slow
def test_neptune_tracker_with_an_offline_neptune_run(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    neptune = pytest.importorskip("neptune")
    monkeypatch.chdir(tmp_path)  # offline runs are written to ./.neptune
    run = neptune.init_run(
        mode="offline",
        project="helios/pyblaze-test",
        capture_hardware_metrics=False,
        capture_stdout=False,
        capture_stderr=False,
        capture_traceback=False,
        git_ref=False,
    )
    history = _fit_tracked(xnn.NeptuneTracker(run))
    run.stop()
    # Read what the client wrote for upload, with Neptune's own offline format (JSON lines).
    logged: dict[str, list[float]] = {}
    for log_file in tmp_path.glob(".neptune/offline/*/data-*.log"):
        for line in log_file.read_text().splitlines():
            operation = json.loads(line)["obj"]
            if operation["type"] == "LogFloats":
                name = "/".join(operation["path"])
                logged.setdefault(name, []).extend(v["value"] for v in operation["values"])
    assert logged["train_loss"] == pytest.approx(history.train_loss)
    assert logged["val_loss"] == pytest.approx(history.val_loss)
    assert len(logged["batch_train_loss"]) == 4


# -- pyblaze.utils ------------------------------------------------------------------------------


def test_find_contexts() -> None:
    walks = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    contexts = xnp.find_contexts(walks, 3)
    assert contexts.shape == (2, 3, 3)
    assert contexts[0].tolist() == [[1, 2, 3], [2, 3, 4], [3, 4, 5]]
    without_pivot, pivots = xnp.find_contexts(walks, 3, exclude_pivot=True)
    assert without_pivot[1].tolist() == [[6, 8], [7, 9], [8, 10]]
    assert pivots.tolist() == [[2, 3, 4], [7, 8, 9]]
    assert xnp.find_contexts(np.arange(4), 2).tolist() == [[0, 1], [1, 2], [2, 3]]
    with pytest.raises(ValueError, match="context_size must be an int >= 2"):
        xnp.find_contexts(walks, 1)
    with pytest.raises(ValueError, match="must be odd with exclude_pivot=True"):
        xnp.find_contexts(walks, 2, exclude_pivot=True)
    with pytest.raises(ValueError, match="larger than the last axis"):
        xnp.find_contexts(walks, 6)


def test_stdlib_helpers() -> None:
    assert stdlib.flatten([[1, 2], [], [3]]) == [1, 2, 3]
    calls = []

    class Thing:
        @stdlib.cached_property
        def value(self) -> int:
            calls.append(1)
            return 42

    thing = Thing()
    assert thing.value == thing.value == 42 and calls == [1]


def _ignore_sigterm_and_sleep() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(60)


def test_stdmp_terminate_kills_processes_that_ignore_sigterm() -> None:
    context = multiprocessing.get_context("fork")
    quick = context.Process(target=time.sleep, args=(0.01,))
    stubborn = context.Process(target=_ignore_sigterm_and_sleep)
    quick.start()
    stubborn.start()
    time.sleep(0.2)
    started = time.monotonic()
    stdmp.terminate(quick, stubborn)
    assert time.monotonic() - started < 5
    assert quick.exitcode == 0 and stubborn.exitcode == -signal.SIGKILL


def test_torch_helpers() -> None:
    t = torch.arange(6.0).reshape(2, 3).t()  # not contiguous
    moved = xtorch.to_device("cpu", {"a": [t, None], "b": (t, 3)})
    assert moved["a"][0].is_contiguous() and moved["a"][1] is None and moved["b"][1] == 3
    assert torch.equal(moved["b"][0], t)
    first, second = xtorch.to_device(torch.device("cpu"), t, [t])
    assert torch.equal(first, t) and isinstance(second, list)
    shared = xtorch.share_memory([torch.zeros(2)])
    assert shared[0].is_shared()
    assert xtorch.gpu_device(False) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="gpu=True needs CUDA"):
            xtorch.gpu_device(True)
        with pytest.raises(ValueError, match="gpu=0 is not a GPU of this machine"):
            xtorch.gpu_device(0)
    with pytest.raises(TypeError, match="gpu must be a bool or an int"):
        xtorch.gpu_device("cuda")  # type: ignore[arg-type]


def test_roc_auc_and_average_precision_match_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(8)
    scores = torch.rand(200, generator=generator)
    labels = (torch.rand(200, generator=generator) < scores).long()
    assert X.roc_auc_score(scores, labels).item() == pytest.approx(
        metrics.roc_auc_score(labels.numpy(), scores.numpy())
    )
    assert X.average_precision(scores, labels).item() == pytest.approx(
        metrics.average_precision_score(labels.numpy(), scores.numpy())
    )


def test_progress_bar_frac() -> None:
    from pyblaze.utils import ProgressBar

    assert ProgressBar.frac(10, 3, verbose=False).total == 4
    assert ProgressBar.frac(9, 3).total == 3
    with pytest.raises(ValueError, match="denom must be greater than 0, got 0"):
        ProgressBar.frac(9, 0)
