import inspect
import math

import pytest
import torch
from torch import nn, optim
from torch.optim import lr_scheduler

import helios.scheduler as hls
from helios.scheduler.utils import SCHEDULER_REGISTRY

REFERENCE_SCHEDULERS = {
    "LambdaLR",
    "MultiplicativeLR",
    "StepLR",
    "MultiStepLR",
    "ConstantLR",
    "LinearLR",
    "ExponentialLR",
    "PolynomialLR",
    "CosineAnnealingLR",
    "SequentialLR",
    "ReduceLROnPlateau",
    "CyclicLR",
    "OneCycleLR",
    "CosineAnnealingWarmRestarts",
}


def _optimizer(*lrs: float) -> optim.Optimizer:
    groups = [{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return optim.SGD(groups)


def _lr_sequence(
    opt: optim.Optimizer, scheduler: lr_scheduler.LRScheduler, steps: int
) -> list[list[float]]:
    seq = [[group["lr"] for group in opt.param_groups]]
    for _ in range(steps - 1):
        opt.step()
        scheduler.step()
        seq.append([group["lr"] for group in opt.param_groups])
    return seq


def test_registry_holds_every_torch_scheduler_and_the_custom_ones() -> None:
    assert hls.SCHEDULER_REGISTRY is SCHEDULER_REGISTRY
    assert str(SCHEDULER_REGISTRY) == "scheduler"
    torch_names = {
        name
        for name in lr_scheduler.__all__
        if inspect.isclass(getattr(lr_scheduler, name))
        and issubclass(getattr(lr_scheduler, name), lr_scheduler.LRScheduler)
        and name != "LRScheduler"
    } | {"ReduceLROnPlateau"}
    assert torch_names >= REFERENCE_SCHEDULERS
    expected = torch_names | {"CosineAnnealingRestartLR", "MultiStepRestartLR"}
    assert set(SCHEDULER_REGISTRY.keys()) == expected
    assert SCHEDULER_REGISTRY.get("CosineAnnealingRestartLR") is hls.CosineAnnealingRestartLR
    assert SCHEDULER_REGISTRY.get("MultiStepRestartLR") is hls.MultiStepRestartLR


def test_create_scheduler_passes_arguments() -> None:
    opt = _optimizer(1.0)
    scheduler = hls.create_scheduler("StepLR", opt, step_size=2, gamma=0.5)
    assert isinstance(scheduler, lr_scheduler.StepLR)
    assert _lr_sequence(opt, scheduler, 5) == [[1.0], [1.0], [0.5], [0.5], [0.25]]

    plateau = hls.create_scheduler("ReduceLROnPlateau", _optimizer(1.0), patience=0)
    assert isinstance(plateau, lr_scheduler.ReduceLROnPlateau)


def test_create_scheduler_unknown_name() -> None:
    with pytest.raises(KeyError, match=r"No object called 'Nope'.*StepLR"):
        hls.create_scheduler("Nope", _optimizer(1.0))


def test_cosine_annealing_restart_sequence() -> None:
    opt = _optimizer(1.1, 2.1)
    scheduler = hls.CosineAnnealingRestartLR(
        opt, periods=[4, 4], restart_weights=[1, 0.5], eta_min=0.1
    )
    c = math.cos(math.pi / 4)
    # Cosine factor 0.5 * (1 + cos(pi * t / 4)) for t = 0..4.
    factors = [1.0, 0.5 * (1 + c), 0.5, 0.5 * (1 - c), 0.0]
    # Epochs 0..4 are the first period (weight 1), 5..8 the second (weight 0.5, restart
    # at 4), and after epoch 8 the learning rate stays at eta_min.
    expected_factor = [*factors, *(0.5 * f for f in factors[1:]), 0.0, 0.0]
    seq = _lr_sequence(opt, scheduler, len(expected_factor))
    for lrs, factor in zip(seq, expected_factor, strict=True):
        assert lrs == pytest.approx([0.1 + factor * 1.0, 0.1 + factor * 2.0])


def test_cosine_annealing_restart_default_weight() -> None:
    opt = _optimizer(1.0)
    scheduler = hls.CosineAnnealingRestartLR(opt, periods=[2])
    seq = _lr_sequence(opt, scheduler, 4)
    assert [lr for (lr,) in seq] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_cosine_annealing_restart_resumes_from_state_dict() -> None:
    opt = _optimizer(1.0)
    scheduler = hls.CosineAnnealingRestartLR(opt, periods=[3, 5], restart_weights=[1, 0.7])
    full = _lr_sequence(opt, scheduler, 9)

    opt = _optimizer(1.0)
    scheduler = hls.CosineAnnealingRestartLR(opt, periods=[3, 5], restart_weights=[1, 0.7])
    head = _lr_sequence(opt, scheduler, 4)
    state = (opt.state_dict(), scheduler.state_dict())
    opt2 = _optimizer(1.0)
    opt2.load_state_dict(state[0])
    scheduler2 = hls.CosineAnnealingRestartLR(opt2, periods=[3, 5], restart_weights=[1, 0.7])
    scheduler2.load_state_dict(state[1])
    tail = _lr_sequence(opt2, scheduler2, 6)
    assert head + tail[1:] == full


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"periods": [2, 2], "restart_weights": [1]},
            r"periods and restart_weights must have the same length.*\[2, 2\].*\[1\]",
        ),
        ({"periods": [2]}, None),
        ({"periods": []}, r"periods must be a non-empty list of positive integers"),
        ({"periods": [2, 0]}, r"periods must be .*periods=\[2, 0\]"),
        ({"periods": [2.5]}, r"periods must be .*periods=\[2.5\]"),
    ],
)
def test_cosine_annealing_restart_validation(kwargs: dict, match: str | None) -> None:
    if match is None:
        hls.CosineAnnealingRestartLR(_optimizer(1.0), **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        hls.CosineAnnealingRestartLR(_optimizer(1.0), **kwargs)


def test_multi_step_restart_sequence() -> None:
    opt = _optimizer(1.0, 4.0)
    scheduler = hls.MultiStepRestartLR(
        opt, milestones=[2, 4, 4, 7], gamma=0.5, restarts=[0, 6], restart_weights=[1, 0.5]
    )
    # 2: x0.5; 4 (twice): x0.25; 6: restart at 0.5 * initial; 7: x0.5.
    expected = [1.0, 1.0, 0.5, 0.5, 0.125, 0.125, 0.5, 0.25, 0.25]
    seq = _lr_sequence(opt, scheduler, len(expected))
    for lrs, factor in zip(seq, expected, strict=True):
        assert lrs == pytest.approx([factor * 1.0, factor * 4.0])


def test_multi_step_restart_defaults() -> None:
    opt = _optimizer(1.0)
    scheduler = hls.MultiStepRestartLR(opt, milestones=[1, 3])
    seq = _lr_sequence(opt, scheduler, 5)
    assert [lr for (lr,) in seq] == pytest.approx([1.0, 0.1, 0.1, 0.01, 0.01])


def test_multi_step_restart_length_mismatch() -> None:
    with pytest.raises(
        ValueError,
        match=r"restarts and restart_weights must have the same length.*"
        r"restarts=\[0, 5\].*restart_weights=\[1.0\]",
    ):
        hls.MultiStepRestartLR(_optimizer(1.0), milestones=[2], restarts=[0, 5])
