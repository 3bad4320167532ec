"""``train`` on helios: its arguments checked into a plan, and the Trainer that runs it."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from helios.core.distributed import is_using_torchrun
from helios.plugins import Plugin
from helios.trainer import Trainer
from helios.trainer.arguments import check_bool, check_loggers, check_precision
from pyblaze.nn._checks import (
    check_batch_kwargs,
    check_callbacks,
    check_clip,
    check_count,
    check_loader,
    check_loss,
    check_metrics,
    check_plugins,
    check_trainer_options,
)
from pyblaze.nn._datamodule import LoaderDataModule
from pyblaze.nn._epoch import TrainSpec
from pyblaze.nn._gpus import GpuArg, resolve_gpu
from pyblaze.nn._helios_run import EngineRun, RunRecords

if TYPE_CHECKING:
    from pyblaze.nn._protocols import Engine


@dataclasses.dataclass
class FitPlan:
    """The checked arguments of a ``train`` call.

    Attributes:
        spec: what the epochs do (sent to every process of the run).
        val_data: the validation loader, if any.
        val_iterations: use only this many validation batches.
        gpus: the GPU ids to train on (``[]``: the CPU).
        plugins: helios plug-ins to register.
        trainer_options: further arguments of the Trainer.
        precision: the precision of the run (``Trainer(precision=...)``).
        compile: compile the model (``Trainer(enable_compile=...)``).
        loggers: the experiment loggers (``Trainer(loggers=...)``).
        shard: shard the model (FSDP2) instead of replicating it in a distributed run.
    """

    spec: TrainSpec
    val_data: DataLoader | None
    val_iterations: int | None
    gpus: list[int]
    plugins: list[Plugin]
    trainer_options: dict[str, Any]
    precision: str = "32"
    compile: bool = False
    loggers: list[Any] = dataclasses.field(default_factory=list)
    shard: bool = False


def plan_fit(
    engine: Engine,
    train_data: Any,
    val_data: Any,
    epochs: Any,
    val_iterations: Any,
    eval_every: Any,
    eval_train: bool,
    eval_val: bool,
    callbacks: Any,
    metrics: Any,
    gpu: GpuArg,
    plugins: Any,
    trainer_options: Any,
    kwargs: Mapping[str, Any],
    precision: Any = "32",
    clip_norm: Any = None,
    clip_value: Any = None,
    compile: Any = False,
    loggers: Any = None,
    shard: Any = False,
) -> FitPlan:
    """Check the arguments of :py:meth:`pyblaze.nn.BaseEngine.train` (same names).

    Returns:
        The plan of the run.

    Raises:
        TypeError: for an argument of the wrong type.
        ValueError: for an invalid value.
    """
    check_loader("train_data", train_data)
    check_loader("val_data", val_data, optional=True)
    check_count("epochs", epochs)
    val_iterations = check_count("val_iterations", val_iterations, optional=True)
    if eval_every is not None:
        raise ValueError(
            f"eval_every={eval_every!r} is not supported: in PyBlaze 1.1.6 it cuts endless "
            "iterable training data into epochs of eval_every batches. Here an epoch is one "
            "pass over the training data, a stream (IterableDataset) included, which must "
            "then end; use eval_every=None (validation runs after every epoch)"
        )
    user_callbacks = check_callbacks(callbacks)
    metric_fns = check_metrics(metrics)
    gpus = resolve_gpu(gpu, multiple=engine.supports_multiple_gpus())
    plugin_list = check_plugins(plugins)
    options = check_trainer_options(trainer_options)
    precision = check_precision(precision, uses_cuda=bool(gpus))
    norm, value = check_clip("clip_norm", clip_norm), check_clip("clip_value", clip_value)
    compile = check_bool("compile", compile)
    logger_list = check_loggers(loggers)
    shard = check_bool("shard", shard)

    train_kwargs = {k: v for k, v in kwargs.items() if not k.startswith("eval_")}
    eval_kwargs = {k[len("eval_") :]: v for k, v in kwargs.items() if k.startswith("eval_")}
    name = type(engine).__name__
    check_batch_kwargs(engine.train_batch, f"{name}.train_batch", train_kwargs)
    for key in ("loss", "eval_loss"):
        if key in kwargs:
            check_loss(key, kwargs[key])
    val_metrics = {}
    if val_data is not None:
        check_batch_kwargs(engine.eval_batch, f"{name}.eval_batch", eval_kwargs, "eval_")
        val_metrics = dict(metric_fns)
        if eval_val and "loss" in train_kwargs:
            val_metrics["loss"] = train_kwargs["loss"]
    spec = TrainSpec(
        epochs=epochs,
        callbacks=user_callbacks,
        train_kwargs=train_kwargs,
        eval_kwargs=eval_kwargs,
        val_metrics=val_metrics,
        train_metrics=metric_fns if eval_train else None,
        train_data=train_data,
        val_data=val_data,
        clip_norm=norm,
        clip_value=value,
    )
    return FitPlan(
        spec, val_data, val_iterations, gpus, plugin_list, options, precision, compile,
        logger_list, shard,
    )  # fmt: skip


def run_fit(engine: Engine, plan: FitPlan) -> list[dict[str, Any]]:
    """Train the engine's model on a helios Trainer as planned.

    The model is back on its original device afterwards, also when training fails.

    Args:
        engine: the engine.
        plan: the checked arguments.

    Returns:
        The history entries, one per epoch.

    Raises:
        RuntimeError: if the Trainer reports a failure without raising.
    """
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    run = EngineRun(engine, plan.spec, shard=plan.shard)
    _refuse_sharded_checkpoint(plan, run.save_name)
    datamodule = LoaderDataModule(plan.spec.train_data, plan.val_data, seed, plan.val_iterations)
    trainer = _make_trainer(engine, plan, seed)
    for plugin in plan.plugins:
        plugin.configure_trainer(trainer)
        plugin.configure_model(run)
        if plugin.plug_id not in trainer.plugins:
            plugin._register_in_trainer(trainer)
    if plan.shard:
        trainer.add_checkpoint_part(RunRecords.name, RunRecords(run))
    try:
        with run.results.open(trainer.is_distributed and not is_using_torchrun()):
            succeeded = trainer.fit(run, datamodule)
            if succeeded:
                run.finish()
            result = run.results.receive() if succeeded else None
    finally:
        run.placement.restore()
    if not succeeded:
        raise RuntimeError("training failed; the traceback was logged above")
    if result is not None:
        run.load_state_dict(result)
    return run.recorder.entries


def _refuse_sharded_checkpoint(plan: FitPlan, save_name: str) -> None:
    """Refuse, before training, to resume a sharded checkpoint without ``shard=True``.

    Raises:
        ValueError: if the newest checkpoint of the run is a sharded one (a ``.dcp``
            folder) and ``shard`` is false.
    """
    from helios.trainer.checkpoint.layout import find_last_checkpoint, is_sharded_checkpoint

    root = plan.trainer_options.get("chkpt_root")
    if plan.shard or root is None:
        return
    newest = find_last_checkpoint(pathlib.Path(root) / save_name)
    if newest is not None and is_sharded_checkpoint(newest):
        raise ValueError(
            f"the newest checkpoint {newest} holds a sharded model (written by a "
            "distributed fit with shard=True); resume it with shard=True"
        )


def _make_trainer(engine: Engine, plan: FitPlan, seed: int) -> Trainer:
    kwargs: dict[str, Any] = {
        "print_banner": False,
        "enable_progress_bar": False,
        # pyblaze's callbacks print its console lines (PyBlaze 1.1.6 format).
        "print_summaries": False,
        "enable_deterministic": torch.are_deterministic_algorithms_enabled(),
        "random_seed": seed,
        "run_name": type(engine.model).__name__,
    }
    kwargs.update(plan.trainer_options)
    kwargs.update(
        precision=plan.precision,
        enable_compile=plan.compile,
        loggers=plan.loggers,
        train_unit="epoch",
        total_steps=plan.spec.epochs,
        # Every epoch ends with a validation (an empty one without val_data): the
        # epoch's metrics go to the loggers and the checkpoint retention from there.
        valid_frequency=1,
        use_cpu=not plan.gpus,
        gpus=plan.gpus or None,
    )
    trainer = Trainer(**kwargs)
    # pyblaze users expect the errors of their batches and callbacks to propagate.
    trainer.train_exceptions.append(Exception)
    return trainer


__all__ = ["FitPlan", "plan_fit", "run_fit"]
