"""Mixed precision, gradient clipping and compile, through a real Trainer.

Every model here writes its step once with the Model helpers (``autocast``, ``backward``,
``clip_gradients``, ``optimizer_step``) and the tests run it at each precision. The exact
resume of an fp16-mixed run (in process and with SIGKILL) is in ``test_resume.py``.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import pytest
import torch
from torch import nn

import helios.data as hld
import helios.model as hlm
import helios.trainer as hlt
from helios.core.precision import PRECISIONS, Precision

NUM_SAMPLES = 32
BATCH_SIZE = 8
LR = 0.1
AUTOCAST_DTYPES = {"32": torch.float32, "bf16-mixed": torch.bfloat16, "fp16-mixed": torch.float16}


class BlobsDataModule(hld.DataModule):
    """32 fixed samples with 6 features and 3 classes, in batches of 8 (4 per epoch)."""

    def setup(self) -> None:
        generator = torch.Generator().manual_seed(7)
        x = torch.randn(NUM_SAMPLES, 6, generator=generator)
        y = torch.randint(0, 3, (NUM_SAMPLES,), generator=generator)
        dataset = torch.utils.data.TensorDataset(x, y)
        self._train_dataset = self._create_dataset(
            dataset, hld.DataLoaderParams(batch_size=BATCH_SIZE, shuffle=True)
        )


class HelperModel(hlm.Model):
    """An MLP whose step is written once with the precision helpers.

    Args:
        clip: keyword arguments of ``clip_gradients`` (``None``: no clipping).
        poison_at: the global iteration whose loss is multiplied by inf.
    """

    def __init__(
        self,
        clip: dict[str, float] | None = None,
        poison_at: int | None = None,
    ) -> None:
        super().__init__("helper")
        self.clip = clip
        self.poison_at = poison_at
        self.forward_dtypes: list[torch.dtype] = []
        self.loss_dtypes: list[torch.dtype] = []
        self.steps: list[dict[str, Any]] = []

    def setup(self, fast_init: bool = False) -> None:
        self.net = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).to(self.device)
        self.net[0].register_forward_hook(
            lambda module, inputs, output: self.forward_dtypes.append(output.dtype)
        )
        self.optimizer = torch.optim.SGD(self.net.parameters(), lr=LR)

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any], fast_init: bool = False) -> None:
        self.net.load_state_dict(state_dict["net"])
        self.optimizer.load_state_dict(state_dict["optimizer"])

    def train(self) -> None:
        self.net.train()

    def train_step(self, batch: Any, state: hlt.TrainingState) -> None:
        x, y = (t.to(self.device) for t in batch)
        with self.autocast():
            loss = nn.functional.cross_entropy(self.net(x), y)
        self.loss_dtypes.append(loss.dtype)
        if state.global_iteration == self.poison_at:
            loss = loss * math.inf
        # The same step at any accumulation: backward divides the loss, the clip and the
        # step act only on the batch that closes the iteration (and the step zeroes).
        closes = self.trainer.accumulation.closes_step
        record: dict[str, Any] = {"before": _flat_weights(self.net)}
        self.backward(loss)
        scaler = self.trainer.precision.scaler
        record["scale"] = None if scaler is None else scaler.get_scale()
        if self.clip is not None:
            record["norm"] = self.clip_gradients(self.optimizer, **self.clip)
            # Clipping again in the same step must not unscale twice.
            self.clip_gradients(self.optimizer, **self.clip)
            if closes:
                record["grads"] = _flat_grads(self.net)
        self.optimizer_step(self.optimizer)
        record["after"] = _flat_weights(self.net)
        if not closes:
            assert torch.equal(record["before"], record["after"])
            assert record.get("norm") is None
            return
        assert all(p.grad is None for p in self.net.parameters())  # zeroed by the step
        record["skipped"] = self.trainer.precision.last_step_skipped
        self.steps.append(record)
        self._loss_items["loss"] = loss.detach()


def _flat_weights(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in net.parameters()]).clone()


def _flat_grads(net: nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.detach().flatten() for p in net.parameters()]).clone()


def _fit(model: hlm.Model, total_steps: int = 4, **trainer_args: Any) -> hlt.Trainer:
    arguments: dict[str, Any] = {
        "train_unit": "iteration",
        "total_steps": total_steps,
        "use_cpu": True,
        "random_seed": 11,
        "print_banner": False,
    }
    arguments.update(trainer_args)
    trainer = hlt.Trainer(**arguments)
    assert trainer.fit(model, BlobsDataModule())
    return trainer


# -- autocast --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_autocast_computes_the_forward_in_the_precisions_dtype(precision: str) -> None:
    model = HelperModel()
    trainer = _fit(model, precision=precision)
    assert trainer.precision.name == precision
    assert model.forward_dtypes == [AUTOCAST_DTYPES[precision]] * 4
    # Autocast computes cross-entropy in float32; the weights stay float32.
    assert model.loss_dtypes == [torch.float32] * 4
    assert all(p.dtype == torch.float32 for p in model.net.parameters())
    assert all(not torch.equal(s["before"], s["after"]) for s in model.steps)


def test_the_same_step_at_each_precision_trains_to_nearby_weights() -> None:
    weights = {}
    for precision in PRECISIONS:
        model = HelperModel()
        _fit(model, total_steps=8, precision=precision)
        weights[precision] = model.steps[-1]["after"]
    start = HelperModel()
    _fit(start, total_steps=1)
    moved = (weights["32"] - start.steps[0]["before"]).abs().max()
    for precision in ("bf16-mixed", "fp16-mixed"):
        # Far closer to the 32-bit run than the training moved the weights.
        assert (weights[precision] - weights["32"]).abs().max() < 0.1 * moved


def test_helpers_without_a_trainer_run_at_32_bit() -> None:
    model = HelperModel()
    model.net = nn.Linear(3, 2)
    model.optimizer = torch.optim.SGD(model.net.parameters(), lr=1.0)
    with model.autocast():
        output = model.net(torch.ones(1, 3))
    assert output.dtype == torch.float32
    model.backward(output.sum())
    assert torch.equal(model.net.bias.grad, torch.ones(2))
    norm = model.clip_gradients(model.optimizer, max_norm=1.0)
    assert norm is not None and norm.item() == pytest.approx(math.sqrt(8))
    before = model.net.bias.detach().clone()
    model.optimizer_step(model.optimizer)
    assert torch.allclose(model.net.bias, before - 1 / math.sqrt(8))


# -- the gradient scaler ---------------------------------------------------------------------


def test_fp16_skips_a_step_with_inf_gradients_and_lowers_the_scale() -> None:
    model = HelperModel(poison_at=3)
    trainer = _fit(model, total_steps=5, precision="fp16-mixed")
    steps = model.steps
    assert [s["skipped"] for s in steps] == [False, False, True, False, False]
    assert torch.equal(steps[2]["before"], steps[2]["after"])
    assert all(not torch.equal(s["before"], s["after"]) for i, s in enumerate(steps) if i != 2)
    assert [s["scale"] for s in steps] == [2.0**16] * 3 + [2.0**15] * 2
    assert trainer.precision.scaler is not None
    assert trainer.precision.scaler.get_scale() == 2.0**15
    assert torch.isfinite(steps[-1]["after"]).all()


def test_bf16_and_32_bit_have_no_scaler_and_never_skip() -> None:
    for precision in ("32", "bf16-mixed"):
        model = HelperModel()
        trainer = _fit(model, precision=precision)
        assert trainer.precision.scaler is None
        assert not any(s["skipped"] for s in model.steps)
        assert trainer.precision.state_dict() == {"name": precision, "scaler": {}}


def test_checkpoints_hold_the_scaler_state_and_older_ones_still_load(
    tmp_path: pathlib.Path,
) -> None:
    model = HelperModel(poison_at=2)
    trainer = _fit(
        model, precision="fp16-mixed", chkpt_frequency=4, chkpt_root=tmp_path, total_steps=4
    )
    (path,) = (tmp_path / "helper").glob("*.pth")
    hlt.register_trainer_types_for_safe_load()
    saved = torch.load(path, weights_only=True)
    assert saved["precision"]["name"] == "fp16-mixed"
    assert saved["precision"]["scaler"]["scale"] == 2.0**15
    assert trainer.precision.state_dict() == saved["precision"]

    # A checkpoint from before the precision part (no "precision" key) resumes with a fresh
    # scaler; one that has it resumes with its scale.
    resumed = HelperModel()
    trainer = _fit(resumed, precision="fp16-mixed", chkpt_root=tmp_path, total_steps=5)
    assert [s["scale"] for s in resumed.steps] == [2.0**15]
    del saved["precision"]
    torch.save(saved, path)
    fresh = HelperModel()
    _fit(fresh, precision="fp16-mixed", chkpt_root=tmp_path, total_steps=5)
    assert [s["scale"] for s in fresh.steps] == [2.0**16]


def test_precision_state_round_trips_and_ignores_other_precisions() -> None:
    first = Precision("fp16-mixed", "cpu", init_scale=64.0, growth_interval=3)
    state = first.state_dict()
    assert state["scaler"]["scale"] == 64.0 and state["scaler"]["growth_interval"] == 3
    second = Precision("fp16-mixed", "cpu")
    second.load_state_dict(state)
    assert second.state_dict() == state
    # A bf16 or 32-bit checkpoint leaves an fp16 scaler fresh, and the other way round.
    second.load_state_dict(Precision("bf16-mixed").state_dict())
    assert second.state_dict() == state
    Precision("32").load_state_dict(state)
    with pytest.raises(ValueError, match=r"precision='16'.*'32', 'bf16-mixed', 'fp16-mixed'"):
        Precision("16")


# -- clipping --------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clipping_by_norm_bounds_the_unscaled_total_norm(precision: str) -> None:
    # Two batches per step: the accumulated gradients are unscaled once, then clipped.
    max_norm = 0.05
    model = HelperModel(clip={"max_norm": max_norm})
    _fit(model, total_steps=4, accumulation_steps=2, precision=precision)
    reference = HelperModel(clip={"max_norm": max_norm})
    _fit(reference, total_steps=4, accumulation_steps=2, precision="32")
    for step, expected in zip(model.steps, reference.steps, strict=True):
        assert step["norm"] > max_norm  # clipping was active
        # The norm reported is the true one: unscaled, whatever the precision.
        assert step["norm"].item() == pytest.approx(expected["norm"].item(), rel=0.03)
        assert step["grads"].norm() <= max_norm * (1 + 1e-5)
        # The optimizer stepped with the clipped gradients (not unscaled a second time).
        change = step["before"] - step["after"]
        assert torch.allclose(change, LR * step["grads"], atol=1e-6)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_clipping_by_value_bounds_every_element(precision: str) -> None:
    max_value = 0.01
    model = HelperModel(clip={"max_value": max_value})
    _fit(model, precision=precision)
    for step in model.steps:
        assert step["norm"] is None
        grads = step["grads"]
        assert grads.abs().max() == pytest.approx(max_value)
        # Some elements are below the limit: the scaled gradients would all be clamped.
        assert (grads.abs() < 0.5 * max_value).any()
        change = step["before"] - step["after"]
        assert torch.allclose(change, LR * grads, atol=1e-7)


def test_clipping_by_value_then_norm_and_bad_limits() -> None:
    model = HelperModel(clip={"max_value": 0.01, "max_norm": 0.02})
    _fit(model, total_steps=2, precision="fp16-mixed")
    for step in model.steps:
        assert step["grads"].abs().max() <= 0.01 + 1e-7
        assert step["grads"].norm() <= 0.02 * (1 + 1e-5)
    with pytest.raises(ValueError, match="max_norm or max_value"):
        model.clip_gradients(model.optimizer)
    with pytest.raises(ValueError, match=r"max_norm must be > 0, but received -1\.0"):
        model.clip_gradients(model.optimizer, max_norm=-1.0)


# -- arguments -------------------------------------------------------------------------------


def test_precision_argument_is_checked() -> None:
    with pytest.raises(ValueError, match=r"precision='bf16'. Expected one of '32', 'bf16-mixed'"):
        hlt.Trainer(precision="bf16")
    with pytest.raises(TypeError, match=r"precision must be one of .* received 16 \(type int\)"):
        hlt.Trainer(precision=16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"enable_compile must be a bool, but received 'yes'"):
        hlt.Trainer(enable_compile="yes")  # type: ignore[arg-type]


# -- compile ---------------------------------------------------------------------------------


def test_networks_wrapped_by_torch_compile_save_and_load_the_plain_keys() -> None:
    eager = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    model = HelperModel()
    model.net = torch.compile(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    model.optimizer = torch.optim.SGD(model.net.parameters(), lr=LR)
    assert next(iter(model.net.state_dict())).startswith("_orig_mod.")
    assert model.compile_networks() == []  # already compiled: only the keys change
    assert list(model.net.state_dict()) == list(eager.state_dict())
    model.net.load_state_dict(eager.state_dict())
    assert torch.equal(model.net.state_dict()["0.weight"], eager.state_dict()["0.weight"])
    # The prefixed keys still load, and the plain keys load into an eager network.
    wrapped = {f"_orig_mod.{k}": torch.zeros_like(v) for k, v in eager.state_dict().items()}
    model.net.load_state_dict(wrapped)
    eager.load_state_dict(model.net.state_dict())
    assert torch.count_nonzero(eager[0].weight) == 0


def test_compile_networks_compiles_built_in_modules_in_place_and_checks_names() -> None:
    graphs: list[torch.fx.GraphModule] = []

    def backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(graph)
        return graph.forward

    model = HelperModel()
    model.net = nn.Linear(2, 2)
    model.loss = nn.MSELoss()
    model.optimizer = torch.optim.SGD(model.net.parameters(), lr=LR)
    with pytest.raises(ValueError, match=r"name 'optimizer'.*Its modules are: \['loss', 'net'\]"):
        model.compile_networks("optimizer")
    net = model.net
    # Modules without parameters are skipped; the network stays the same object.
    assert model.compile_networks(backend=backend) == ["net"]
    assert model.net is net and list(net.state_dict()) == ["weight", "bias"]
    assert model.compile_networks("net") == []  # already compiled
    output = model.net(torch.ones(3, 2))
    # nn.Linear lives in torch, where Module.compile alone would silently run eagerly.
    assert len(graphs) == 1
    torch.testing.assert_close(output, torch.ones(3, 2) @ net.weight.T + net.bias)


@pytest.mark.slow
def test_compiled_and_eager_runs_agree_and_their_checkpoints_load_into_each_other(
    tmp_path: pathlib.Path,
) -> None:
    eager, compiled = HelperModel(), HelperModel()
    _fit(eager, total_steps=4, precision="bf16-mixed")
    graphs = _compiled_graphs()
    _fit(compiled, total_steps=4, precision="bf16-mixed", enable_compile=True)
    assert _compiled_graphs() > graphs
    assert compiled.forward_dtypes == eager.forward_dtypes  # hooks and autocast traced
    assert eager.net._compiled_call_impl is None
    assert list(compiled.net.state_dict()) == list(eager.net.state_dict())
    for ours, theirs in zip(compiled.steps, eager.steps, strict=True):
        torch.testing.assert_close(ours["after"], theirs["after"], rtol=1e-2, atol=1e-3)

    # Half a run compiled, resumed eager; and half eager, resumed compiled.
    for first, second in ((True, False), (False, True)):
        root = tmp_path / f"compiled-{first}"
        half = HelperModel()
        _fit(half, total_steps=2, chkpt_frequency=2, chkpt_root=root, enable_compile=first)
        rest = HelperModel()
        _fit(rest, total_steps=4, chkpt_root=root, enable_compile=second)
        assert len(rest.steps) == 2
        assert torch.equal(rest.steps[0]["before"], half.steps[-1]["after"])
        full = HelperModel()
        _fit(full, total_steps=4)
        torch.testing.assert_close(
            rest.steps[-1]["after"], full.steps[-1]["after"], rtol=1e-4, atol=1e-5
        )


@pytest.mark.slow
def test_a_compiled_run_crashed_and_resumed_equals_the_uninterrupted_compiled_run(
    tmp_path: pathlib.Path,
) -> None:
    import resume_job as job

    def run(workdir: pathlib.Path, crash_at: int | None = None) -> tuple[bool, Any]:
        model = job.ResumeModel(accumulation=2, crash_at=crash_at)
        trainer = job.make_trainer(
            workdir, "iteration", 9, 2, precision="fp16-mixed", enable_compile=True
        )
        return trainer.fit(model, job.ResumeDataModule()), model

    graphs = _compiled_graphs()
    ok, reference = run(tmp_path / "reference")
    assert ok and _compiled_graphs() > graphs
    crashed, _ = run(tmp_path, crash_at=11)
    assert crashed is False
    resumed, second = run(tmp_path)
    assert resumed
    assert second.records[0]["gi"] == 11
    for key, value in reference.net.state_dict().items():
        assert torch.equal(second.net.state_dict()[key], value), key
    by_iteration = {r["gi"]: {k: v for k, v in r.items() if k != "pid"} for r in second.records}
    expected = [{k: v for k, v in r.items() if k != "pid"} for r in reference.records]
    assert [by_iteration[gi] for gi in sorted(by_iteration)] == expected[10:]


def _compiled_graphs() -> int:
    """How many graphs Dynamo has compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


# -- CUDA --------------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("precision", PRECISIONS)
def test_precisions_on_cuda(precision: str) -> None:
    poison_at = 3 if precision == "fp16-mixed" else None
    model = HelperModel(poison_at=poison_at, clip={"max_norm": 0.05})
    trainer = _fit(model, total_steps=5, precision=precision, use_cpu=False)
    assert model.net[0].weight.is_cuda
    assert model.forward_dtypes == [AUTOCAST_DTYPES[precision]] * 5
    skipped = [s["skipped"] for s in model.steps]
    if precision == "fp16-mixed":
        # The inf loss is skipped and lowers the scale.
        assert skipped == [False, False, True, False, False]
        assert trainer.precision.scaler is not None
        assert trainer.precision.scaler.get_scale() == 2.0**15
    else:
        assert not any(skipped)
    for step in model.steps[3:]:
        assert step["grads"].norm() <= 0.05 * (1 + 1e-4)


@needs_cuda
@pytest.mark.slow
def test_compile_with_inductor_on_cuda_agrees_with_eager(tmp_path: pathlib.Path) -> None:
    eager, compiled = HelperModel(), HelperModel()
    _fit(eager, total_steps=4, precision="fp16-mixed", use_cpu=False)
    graphs = _compiled_graphs()
    _fit(
        compiled,
        total_steps=4,
        precision="fp16-mixed",
        use_cpu=False,
        enable_compile=True,
        chkpt_frequency=4,
        chkpt_root=tmp_path,
    )
    assert _compiled_graphs() > graphs
    for ours, theirs in zip(compiled.steps, eager.steps, strict=True):
        torch.testing.assert_close(ours["after"], theirs["after"], rtol=1e-2, atol=1e-3)
    # The compiled run's checkpoint resumes eagerly.
    rest = HelperModel()
    _fit(rest, total_steps=5, precision="fp16-mixed", use_cpu=False, chkpt_root=tmp_path)
    assert torch.equal(rest.steps[0]["before"], compiled.steps[-1]["after"])
