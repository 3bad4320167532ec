"""Every Trainer argument is checked in the constructor, with a message naming it."""

from __future__ import annotations

import datetime
import math
import pathlib

import pytest
import torch

import helios.trainer as hlt


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"train_unit": "epochs"}, ValueError, r"train_unit='epochs'.*'epoch', 'iteration'"),
        ({"train_unit": 1}, TypeError, r"train_unit must be a TrainingUnit"),
        ({"total_steps": -1}, ValueError, r"total_steps must be >= 0.*-1"),
        ({"total_steps": 2.5}, ValueError, r"total_steps must be a non-negative whole.*2.5"),
        ({"total_steps": math.nan}, ValueError, r"total_steps"),
        ({"total_steps": "10"}, TypeError, r"total_steps must be an int or math.inf.*'10'"),
        ({"valid_frequency": 0}, ValueError, r"valid_frequency must be None or an int >= 1.*0"),
        ({"valid_frequency": -2}, ValueError, r"valid_frequency.*-2"),
        ({"print_frequency": 0}, ValueError, r"print_frequency.*0"),
        ({"print_frequency": 1.5}, TypeError, r"print_frequency.*1.5"),
        ({"chkpt_frequency": -1, "chkpt_root": "."}, ValueError, r"chkpt_frequency.*-1"),
        ({"chkpt_frequency": 1}, ValueError, r"chkpt_frequency=1 needs chkpt_root"),
        ({"accumulation_steps": 0}, ValueError, r"accumulation_steps must be an int >= 1.*0"),
        ({"accumulation_steps": None}, TypeError, r"accumulation_steps"),
        ({"early_stop_cycles": 0}, ValueError, r"early_stop_cycles.*0"),
        ({"random_seed": -1}, ValueError, r"random_seed must be an int >= 0.*-1"),
        ({"random_seed": 1.0}, TypeError, r"random_seed must be None or an int >= 0"),
        ({"random_seed": True}, TypeError, r"random_seed"),
        (
            {"enable_deterministic": True, "enable_cudnn_benchmark": True},
            ValueError,
            r"mutually exclusive",
        ),
        ({"enable_tensorboard": True}, ValueError, r"enable_tensorboard=True needs run_path"),
        ({"enable_file_logging": True}, ValueError, r"enable_file_logging=True needs log_path"),
        ({"use_cpu": True, "gpus": [0]}, ValueError, r"cannot request CPU and GPU"),
        ({"gpus": "0"}, TypeError, r"gpus must be None or a list of ints"),
        ({"use_cpu": "yes"}, TypeError, r"use_cpu must be None or a bool"),
        ({"run_name": 3}, TypeError, r"run_name must be a str"),
        ({"dist_timeout": 0}, ValueError, r"dist_timeout must be a positive, finite.*0"),
        ({"dist_timeout": -5.0}, ValueError, r"dist_timeout.*-5.0"),
        ({"dist_timeout": math.inf}, ValueError, r"dist_timeout.*inf"),
        (
            {"dist_timeout": datetime.timedelta(0)},
            ValueError,
            r"dist_timeout must be a positive.*timedelta\(0\)",
        ),
        (
            {"dist_timeout": "30"},
            TypeError,
            r"dist_timeout must be None, a number of seconds.*'30'",
        ),
        ({"dist_timeout": True}, TypeError, r"dist_timeout.*True \(type bool\)"),
    ],
)
def test_invalid_arguments_are_rejected(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        hlt.Trainer(**kwargs)


def test_paths_that_are_files_are_rejected(tmp_path: pathlib.Path) -> None:
    file = tmp_path / "file.txt"
    file.write_text("x")
    for name, extra in [
        ("log_path", {"enable_file_logging": True}),
        ("run_path", {"enable_tensorboard": True}),
        ("chkpt_root", {}),
        ("src_root", {}),
    ]:
        with pytest.raises(ValueError, match=f"{name} must be"):
            hlt.Trainer(**{name: file}, **extra)  # type: ignore[arg-type]


def test_src_root_must_exist(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="src_root must be an existing directory"):
        hlt.Trainer(src_root=tmp_path / "missing")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
@pytest.mark.parametrize("kwargs", [{"use_cpu": False}, {"gpus": [0]}])
def test_cuda_requested_without_cuda(kwargs) -> None:
    with pytest.raises(RuntimeError, match=r"CUDA was requested.*not available"):
        hlt.Trainer(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_invalid_gpu_id_is_rejected() -> None:
    with pytest.raises(ValueError, match="not valid"):
        hlt.Trainer(gpus=[torch.cuda.device_count()])


def test_valid_arguments_are_normalised(tmp_path: pathlib.Path) -> None:
    trainer = hlt.Trainer(
        train_unit="iteration",
        total_steps=4.0,
        chkpt_frequency=2,
        chkpt_root=str(tmp_path),  # type: ignore[arg-type]
        use_cpu=True,
    )
    assert trainer.train_unit is hlt.TrainingUnit.ITERATION
    assert trainer.total_steps == 4 and isinstance(trainer.total_steps, int)
    assert hlt.Trainer(total_steps=math.inf).total_steps == math.inf
    assert trainer.gpu_ids == [] and not trainer.is_distributed
    assert trainer.device == torch.device("cpu")
    assert trainer.queue is None and trainer.plugins == {}
    assert trainer.train_exceptions == [] and trainer.test_exceptions == []


def test_log_path_without_file_logging_is_accepted() -> None:
    hlt.Trainer(log_path=pathlib.Path("somewhere"), run_path=pathlib.Path("elsewhere"))


def test_training_unit_from_str() -> None:
    assert hlt.TrainingUnit.from_str("epoch") is hlt.TrainingUnit.EPOCH
    assert hlt.TrainingUnit.from_str("iteration") is hlt.TrainingUnit.ITERATION
    with pytest.raises(ValueError, match="received 'batch'"):
        hlt.TrainingUnit.from_str("batch")


def test_training_state_dict() -> None:
    state = hlt.TrainingState(current_iteration=3, global_epoch=1)
    assert state.dict()["current_iteration"] == 3
    assert state == hlt.TrainingState(current_iteration=3, global_epoch=1)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), (30, 30.0), (2.5, 2.5), (datetime.timedelta(minutes=2), 120.0)],
)
def test_dist_timeout_is_kept_as_a_timedelta(value: object, seconds: float | None) -> None:
    config = hlt.Trainer(dist_timeout=value)._config
    expected = None if seconds is None else datetime.timedelta(seconds=seconds)
    assert config.dist_timeout == expected
