"""Every public name of the two references' module tables, at its documented path.

Source of the tables: ``../shared/spec/helios-reference.md`` (Helios 1.2.7, §0 and §1,
plus the 1.3.0 additions of ``helios-later-versions.md``) and
``../shared/spec/pyblaze-reference.md`` (PyBlaze 1.1.6, §1-§9b and the module paths of
1.1.6). For each callable the documented parameters must come first, in order, with the
documented defaults; parameters of ours may follow if they have defaults (or are ``*args``
/ ``**kwargs``). A documented parameter without a default may have one here. A documented
positional parameter may be taken by our ``*args``.

There are no exceptions: a missing name or a changed default fails, so a later change cannot
silently drop a documented name (deliberate differences in behaviour are listed in
``docs-differences.md``; none of them changes a documented name or signature).
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
from typing import Any, NamedTuple

import pytest
import torch

R = inspect.Parameter.empty  # "required": no documented default
ANY = object()  # a default exists, its value is not documented


class Entry(NamedTuple):
    module: str
    name: str  # dotted inside the module; "" checks the module itself
    params: tuple[tuple[str, Any], ...] | None  # None: only existence is checked


def e(module: str, name: str, *params: Any) -> Entry:
    """``params``: names (required) or ``(name, default)`` pairs; ``"*args"``/``"**kw"``."""
    spec = tuple(p if isinstance(p, tuple) else (p, R) for p in params)
    return Entry(module, name, spec)


def exists(module: str, *names: str) -> list[Entry]:
    return [Entry(module, name, None) for name in names]


# -- Helios 1.2.7 (+ 1.3.0 additions) ---------------------------------------------------------

HC, HD, HL = "helios.core", "helios.core.distributed", "helios.core.logging"
TB = "TensorboardWriter"

HELIOS: list[Entry] = [
    *exists("helios", "__version__"),
    *exists(
        "helios.core",
        "cuda",
        "distributed",
        "logging",
        "rng",
        "AverageTimer",
        "ChdirContext",
        "Registry",
        "convert_to_list",
        "get_env_info_str",
        "get_from_optional",
        "safe_torch_load",
        "update_all_registries",
    ),
    e(f"{HC}.utils", "get_env_info_str"),
    e(f"{HC}.utils", "get_from_optional", "opt_var", ("raise_on_empty", False)),
    e(f"{HC}.utils", "convert_to_list", "var"),
    e(f"{HC}.utils", "ChdirContext", "target_path"),
    e(f"{HC}.utils", "AverageTimer", ("sliding_window", 200)),
    e(f"{HC}.utils", "AverageTimer.start", "self"),
    e(f"{HC}.utils", "AverageTimer.record", "self"),
    e(f"{HC}.utils", "AverageTimer.get_average_time", "self"),
    e(f"{HC}.utils", "Registry", "name"),
    e(f"{HC}.utils", "Registry.register", "self", "obj", ("suffix", None)),
    e(f"{HC}.utils", "Registry.get", "self", "name", ("suffix", None)),
    e(f"{HC}.utils", "Registry.keys", "self"),
    *exists(f"{HC}.utils", "Registry.__contains__", "Registry.__iter__", "Registry.__str__"),
    e(f"{HC}.utils", "update_all_registries", "root", ("recurse", True), ("import_prefix", "")),
    e(f"{HC}.utils", "safe_torch_load", "f", "**kwargs"),
    e(f"{HC}.rng", "get_default_seed"),
    e(f"{HC}.rng", "DefaultNumpyRNG", ("seed", None)),
    *exists(f"{HC}.rng", "DefaultNumpyRNG.generator"),
    e(f"{HC}.rng", "DefaultNumpyRNG.state_dict", "self"),
    e(f"{HC}.rng", "DefaultNumpyRNG.load_state_dict", "self", "state"),
    e(f"{HC}.rng", "create_default_numpy_rng", ("seed", None)),
    e(f"{HC}.rng", "get_default_numpy_rng"),
    e(f"{HC}.rng", "seed_rngs", ("seed", None), ("skip_torch", False)),
    e(f"{HC}.rng", "get_rng_state_dict"),
    e(f"{HC}.rng", "load_rng_state_dict", "state"),
    e(HD, "is_using_torchrun"),
    e(HD, "init_dist", ("backend", "nccl"), ("rank", None), ("world_size", None)),
    e(HD, "shutdown_dist"),
    e(HD, "is_dist_active"),
    e(
        HD,
        "DistributedInfo",
        ("local_rank", 0),
        ("rank", 0),
        ("local_world_size", 1),
        ("world_size", 1),
    ),
    e(HD, "get_dist_info"),
    e(HD, "get_local_rank"),
    e(HD, "get_global_rank"),
    e(HD, "get_world_size"),  # 1.3.0
    e(HD, "get_local_world_size"),  # 1.3.0
    e(HD, "gather_into_tensor", "tensor", "size"),
    e(HD, "all_reduce_tensors", "tensor", "**kwargs"),
    e(HD, "global_print", "*args", ("global_rank", 0), "**kwargs"),
    e(HD, "local_print", "*args", ("local_rank", 0), "**kwargs"),
    e(HD, "safe_barrier", "**kwargs"),
    e(f"{HC}.cuda", "requires_cuda_support"),
    e(f"{HC}.cuda", "DisableCuDNNBenchmarkContext"),
    e(HL, "RootLogger", ("capture_warnings", False)),  # the argument is 1.3.0's
    e(HL, "RootLogger.setup", "self", ("log_file", None)),
    *exists(HL, "RootLogger.logger", "RootLogger.log_file"),
    *[
        e(HL, f"RootLogger.{m}", "self", "msg", "**kwargs")
        for m in ("info", "warning", "error", "exception")
    ],
    e(HL, "RootLogger.flush", "self"),
    e(HL, "RootLogger.close", "self"),
    e(HL, TB),
    e(HL, f"{TB}.setup", "self", "run_path"),
    *exists(HL, f"{TB}.run_path"),
    e(HL, f"{TB}.add_scalar", "self", "tag", "scalar_value", ("global_step", None)),
    e(HL, f"{TB}.add_scalars", "self", "main_tag", "tag_scalar_dict", "global_step"),
    e(
        HL,
        f"{TB}.add_image",
        "self",
        "tag",
        "img_tensor",
        ("global_step", None),
        ("dataformats", "CHW"),
    ),
    e(
        HL,
        f"{TB}.add_images",
        "self",
        "tag",
        "img_tensor",
        ("global_step", None),
        ("dataformats", "NCHW"),
    ),
    e(HL, f"{TB}.add_figure", "self", "tag", "figure", ("global_step", None), ("close", True)),
    e(HL, f"{TB}.add_text", "self", "tag", "text_string", ("global_step", None)),
    e(
        HL,
        f"{TB}.add_graph",
        "self",
        "model",
        ("input_to_model", None),
        ("verbose", False),
        ("use_strict_trace", True),
    ),
    e(
        HL,
        f"{TB}.add_pr_curve",
        "self",
        "tag",
        "labels",
        "predictions",
        ("global_step", None),
        ("num_thresholds", 127),
    ),
    e(
        HL,
        f"{TB}.add_hparams",
        "self",
        "hparam_dict",
        "metric_dict",
        ("hparam_domain_discrete", None),
        ("run_name", None),
        ("global_step", None),
    ),
    e(HL, f"{TB}.flush", "self"),
    e(HL, f"{TB}.close", "self"),
    e(HL, "get_default_log_name", "run_name"),
    e(HL, "create_default_loggers", ("enable_tensorboard", True), ("capture_warnings", False)),
    e(HL, "restore_default_loggers", ("log_path", None), ("run_path", None)),
    e(HL, "setup_default_loggers", "run_name", ("log_root", None), ("runs_root", None)),
    e(HL, "flush_default_loggers"),
    e(HL, "close_default_loggers"),
    e(HL, "get_root_logger"),
    e(HL, "is_root_logger_active"),
    e(HL, "get_tensorboard_writer"),
    *exists(
        "helios.data",
        "COLLATE_FN_REGISTRY",
        "DATASET_REGISTRY",
        "DataLoaderParams",
        "DataModule",
        "DatasetSplit",
        "create_collate_fn",
        "create_dataloader",
        "create_dataset",
        "TRANSFORM_REGISTRY",
        "create_transform",
        "samplers",
        "transforms",
        "transforms.ToImageTensor",
    ),
    e("helios.data.datamodule", "create_dataset", "type_name", "*args", "**kwargs"),
    e("helios.data.datamodule", "create_collate_fn", "type_name", "*args", "**kwargs"),
    *exists(
        "helios.data.datamodule", "DatasetSplit.TRAIN", "DatasetSplit.VALID", "DatasetSplit.TEST"
    ),
    e("helios.data.datamodule", "DatasetSplit.from_str", "label"),
    e(
        "helios.data.datamodule",
        "create_dataloader",
        "dataset",
        ("random_seed", 6691),
        ("batch_size", 1),
        ("shuffle", False),
        ("num_workers", 0),
        ("pin_memory", True),
        ("drop_last", False),
        ("debug_mode", False),
        ("is_distributed", False),
        ("sampler", None),
        ("collate_fn", None),
    ),
    e(
        "helios.data.datamodule",
        "DataLoaderParams",
        ("random_seed", 6691),
        ("batch_size", 1),
        ("shuffle", False),
        ("num_workers", 0),
        ("pin_memory", True),
        ("drop_last", False),
        ("debug_mode", False),
        ("is_distributed", None),
        ("sampler", None),
        ("collate_fn", None),
    ),
    e("helios.data.datamodule", "DataLoaderParams.to_dict", "self"),
    e("helios.data.datamodule", "DataLoaderParams.from_dict", "table"),
    e("helios.data.datamodule", "DataModule"),
    *[
        e("helios.data.datamodule", f"DataModule.{m}", "self")
        for m in (
            "prepare_data",
            "setup",
            "train_dataloader",
            "valid_dataloader",
            "test_dataloader",
            "teardown",
        )
    ],
    e("helios.data.datamodule", "DataModule._create_dataset", "self", "dataset", "params"),
    e("helios.data.datamodule", "DataModule._create_dataloader", "self", "dataset"),
    *exists(
        "helios.data.datamodule",
        "DataModule.is_distributed",
        "DataModule.trainer",
        "DataModule.train_dataset",
        "DataModule.valid_dataset",
        "DataModule.test_dataset",
    ),
    *exists(
        "helios.data.samplers",
        "SAMPLER_REGISTRY",
        "ResumableSamplerType",
        "ResumableSampler.start_iter",
    ),
    e("helios.data.samplers", "create_sampler", "type_name", "*args", "**kwargs"),
    e("helios.data.samplers", "ResumableSampler", "batch_size"),
    e("helios.data.samplers", "ResumableSampler.set_epoch", "self", "epoch"),
    e(
        "helios.data.samplers",
        "ResumableRandomSampler",
        "data_source",
        ("seed", 0),
        ("batch_size", 1),
    ),
    e("helios.data.samplers", "ResumableSequentialSampler", "data_source", ("batch_size", 1)),
    e(
        "helios.data.samplers",
        "ResumableDistributedSampler",
        "dataset",
        ("num_replicas", None),
        ("rank", None),
        ("shuffle", True),
        ("seed", 0),
        ("drop_last", False),
        ("batch_size", 1),
    ),
    e("helios.data.transforms", "create_transform", "type_name", "*args", "**kwargs"),
    e("helios.data.transforms", "ToImageTensor", ("dtype", torch.float32), ("scale", True)),
    e("helios.data.functional", "load_image", "path", ("flags", 1), ("as_rgb", True)),
    e("helios.data.functional", "load_image_pil", "path", ("out_fmt", ""), ("as_numpy", True)),
    e(
        "helios.data.functional",
        "tensor_to_numpy",
        "x",
        ("squeeze", True),
        ("clamp", (0, 1)),
        ("transpose", True),
        ("dtype", torch.float),
        ("as_uint8", True),
    ),
    e("helios.data.functional", "show_tensor", "tens", ("title", "debug window")),
    e("helios.data.functional", "show_tensors", "tens"),
    e("helios.data.functional", "convert_to_hwc", "img", ("input_order", "HWC")),
    e("helios.data.functional", "to_y_channel", "img"),
    e("helios.data.functional", "bgr2ycbcr", "img", ("only_y", False)),
    e("helios.data.functional", "rgb2ycbcr_torch", "img", ("only_y", False)),
    *exists("helios.model", "Model", "MODEL_REGISTRY", "create_model", "find_pretrained_file"),
    e("helios.model.utils", "create_model", "type_name", "*args", "**kwargs"),
    e("helios.model.utils", "find_pretrained_file", "root", "name"),
    e("helios.model.model", "Model", "save_name"),
    *exists(
        "helios.model.model",
        *(
            f"Model.{p}"
            for p in (
                "save_name",
                "is_distributed",
                "map_loc",
                "device",
                "rank",
                "trainer",
                "metrics",
            )
        ),
    ),
    e("helios.model.model", "Model.setup", "self", ("fast_init", False)),
    e("helios.model.model", "Model.load_state_dict", "self", "state_dict", ("fast_init", False)),
    e("helios.model.model", "Model.trained_state_dict", "self", "*args", "**kwargs"),
    e("helios.model.model", "Model.append_metadata_to_chkpt_name", "self", "chkpt_name"),
    e("helios.model.model", "Model.append_to_banner", "self", "banner"),
    e("helios.model.model", "Model.on_training_batch_end", "self", "state", ("should_log", False)),
    *[
        e("helios.model.model", f"Model.{m}", "self")
        for m in (
            "load_for_testing",
            "state_dict",
            "train",
            "eval",
            "on_training_start",
            "on_training_end",
            "have_metrics_improved",
            "should_training_stop",
            "on_testing_start",
            "on_testing_end",
            "types_for_safe_load",
        )
    ],
    *[
        e("helios.model.model", f"Model.{m}", "self", "current_epoch")
        for m in ("on_training_epoch_start", "on_training_epoch_end")
    ],
    e("helios.model.model", "Model.on_training_batch_start", "self", "state"),
    e("helios.model.model", "Model.train_step", "self", "batch", "state"),
    *[
        e("helios.model.model", f"Model.{m}", "self", "validation_cycle")
        for m in ("on_validation_start", "on_validation_end")
    ],
    *[
        e("helios.model.model", f"Model.{m}", "self", "step")
        for m in (
            "on_validation_batch_start",
            "on_validation_batch_end",
            "on_testing_batch_start",
            "on_testing_batch_end",
        )
    ],
    e("helios.model.model", "Model.valid_step", "self", "batch", "step"),
    e("helios.model.model", "Model.test_step", "self", "batch", "step"),
    *exists("helios.trainer", "TrainingUnit.ITERATION", "TrainingUnit.EPOCH"),
    e("helios.trainer", "TrainingUnit.from_str", "label"),
    e(
        "helios.trainer",
        "TrainingState",
        ("current_iteration", 0),
        ("global_iteration", 0),
        ("global_epoch", 0),
        ("validation_cycles", 0),
        ("dataset_iter", 0),
        ("early_stop_count", 0),
        ("average_iter_time", 0),
        ("running_iter", 0),
    ),
    e("helios.trainer", "TrainingState.dict", "self"),
    e("helios.trainer", "find_last_checkpoint", "root"),
    e("helios.trainer", "get_trainer_safe_types_for_load"),
    e("helios.trainer", "register_trainer_types_for_safe_load"),
    e(
        "helios.trainer",
        "Trainer",
        ("run_name", ""),
        ("train_unit", "EPOCH"),
        ("total_steps", 0),
        ("valid_frequency", None),
        ("chkpt_frequency", None),
        ("print_frequency", None),
        ("accumulation_steps", 1),
        ("enable_cudnn_benchmark", False),
        ("enable_deterministic", False),
        ("early_stop_cycles", None),
        ("use_cpu", None),
        ("gpus", None),
        ("random_seed", None),
        ("enable_tensorboard", False),
        ("enable_file_logging", False),
        ("enable_progress_bar", False),
        ("chkpt_root", None),
        ("log_path", None),
        ("run_path", None),
        ("src_root", None),
        ("import_prefix", ""),
        ("print_banner", True),
        ("capture_warnings", False),
    ),
    e("helios.trainer", "Trainer.fit", "self", "model", "datamodule"),
    e("helios.trainer", "Trainer.test", "self", "model", "datamodule"),
    *exists(
        "helios.trainer",
        *(
            f"Trainer.{p}"
            for p in (
                "model",
                "datamodule",
                "local_rank",
                "rank",
                "gpu_ids",
                "train_exceptions",
                "test_exceptions",
                "plugins",
                "queue",
            )
        ),
    ),
    *exists("helios.losses", "LOSS_REGISTRY", "create_loss", "WeightedLoss"),
    e("helios.losses", "create_loss", "type_name", "*args", "**kwargs"),
    e("helios.losses", "WeightedLoss", ("loss_weight", 1.0)),
    *exists("helios.metrics", "METRICS_REGISTRY", "create_metric", "functional"),
    e("helios.metrics", "create_metric", "type_name", "*args", "**kwargs"),
    e(
        "helios.metrics",
        "CalculatePSNR",
        "crop_border",
        ("input_order", "HWC"),
        ("test_y_channel", False),
    ),
    e(
        "helios.metrics",
        "CalculateSSIM",
        "crop_border",
        ("input_order", "HWC"),
        ("test_y_channel", False),
    ),
    e("helios.metrics", "CalculateMAP"),
    e("helios.metrics", "CalculateMAE", ("scale", 1)),
    *[
        e(
            "helios.metrics.functional",
            f,
            "img",
            "img2",
            "crop_border",
            ("input_order", "HWC"),
            ("test_y_channel", False),
        )
        for f in ("calculate_psnr", "calculate_ssim")
    ],
    *[
        e("helios.metrics.functional", f, "img", "img2", "crop_border", ("test_y_channel", False))
        for f in ("calculate_psnr_torch", "calculate_ssim_torch")
    ],
    e("helios.metrics.functional", "calculate_mAP", "targs", "preds"),
    e("helios.metrics.functional", "calculate_mae", "pred", "gt", ("scale", 1.0)),
    e("helios.metrics.functional", "calculate_mae_torch", "pred", "gt", ("scale", 1.0)),
    *exists("helios.nn", "swa_utils", "NETWORK_REGISTRY"),
    e("helios.nn", "create_network", "type_name", "*args", "**kwargs"),
    e(
        "helios.nn",
        "default_init_weights",
        "module_list",
        ("scale", 1),
        ("bias_fill", 0),
        "**kwargs",
    ),
    e("helios.nn.swa_utils", "EMA", "net", ("decay", 0.9997), ("device", None)),
    *exists("helios.nn.swa_utils", "EMA.module", "EMA.forward"),
    e("helios.nn.swa_utils", "EMA.update", "self", "net"),
    e("helios.nn.swa_utils", "EMA.set", "self", "net"),
    e("helios.nn.layers", "AdaptiveAvgPool2d", "output_size"),
    *exists("helios.optim", "OPTIMIZER_REGISTRY"),
    e("helios.optim", "create_optimizer", "type_name", "*args", "**kwargs"),
    *exists("helios.scheduler", "SCHEDULER_REGISTRY"),
    e("helios.scheduler", "create_scheduler", "type_name", "*args", "**kwargs"),
    e(
        "helios.scheduler",
        "CosineAnnealingRestartLR",
        "optimizer",
        "periods",
        ("restart_weights", None),
        ("eta_min", 0),
        ("last_epoch", -1),
    ),
    e(
        "helios.scheduler",
        "MultiStepRestartLR",
        "optimizer",
        "milestones",
        ("gamma", 0.1),
        ("restarts", None),
        ("restart_weights", None),
        ("last_epoch", -1),
    ),
    *exists("helios.plugins", "PLUGIN_REGISTRY", "CUDAPlugin", "Plugin"),
    e("helios.plugins", "create_plugin", "type_name", "*args", "**kwargs"),
    e(
        "helios.plugins",
        "UniquePluginOverrides",
        ("training_batch", False),
        ("validation_batch", False),
        ("testing_batch", False),
        ("should_training_stop", False),
    ),
    e("helios.plugins", "Plugin", "plug_id"),
    *exists(
        "helios.plugins",
        *(
            f"Plugin.{p}"
            for p in ("unique_overrides", "is_distributed", "map_loc", "device", "rank", "trainer")
        ),
    ),
    e("helios.plugins", "Plugin.configure_trainer", "self", "trainer"),
    e("helios.plugins", "Plugin.configure_model", "self", "model"),
    *[
        e("helios.plugins", f"Plugin.{m}", "self")
        for m in (
            "setup",
            "on_training_start",
            "on_training_end",
            "should_training_stop",
            "state_dict",
            "on_testing_start",
            "on_testing_end",
        )
    ],
    e("helios.plugins", "Plugin.process_training_batch", "self", "batch", "state"),
    e("helios.plugins", "Plugin.process_validation_batch", "self", "batch", "step"),
    e("helios.plugins", "Plugin.process_testing_batch", "self", "batch", "step"),
    e("helios.plugins", "Plugin.on_validation_start", "self", "validation_cycle"),
    e("helios.plugins", "Plugin.on_validation_end", "self", "validation_cycle"),
    e("helios.plugins", "Plugin.load_state_dict", "self", "state_dict"),
    e("helios.plugins", "Plugin._append_train_exceptions", "self", "exc", "trainer"),
    e("helios.plugins", "Plugin._append_test_exceptions", "self", "exc", "trainer"),
    e("helios.plugins", "Plugin._register_in_trainer", "self", "trainer"),
    e("helios.plugins", "CUDAPlugin._move_collection_to_device", "self", "batch"),
    e(
        "helios.onnx",
        "export_to_onnx",
        "net",
        "net_args",
        "out_path",
        ("validate_output", False),
        ("save_on_validation_fail", True),
        ("rtol", 1e-3),
        ("atol", 1e-5),
        "**kwargs",
    ),
    e("helios.chkpt_migrator", "migrate_checkpoints_to_current_version", "root"),
    *exists("helios.chkpt_migrator", "_main"),
]

OPTUNA: list[Entry] = [
    *exists("helios.plugins.optuna", "_ORIG_NUMBER_KEY", "OptunaPlugin.trial"),
    e(
        "helios.plugins.optuna",
        "resume_study",
        "study_args",
        ("failed_states", ANY),
        ("backup_study", True),
    ),
    e("helios.plugins.optuna", "checkpoint_sampler", "trial", "chkpt_root"),
    e("helios.plugins.optuna", "restore_sampler", "chkpt_root"),
    e("helios.plugins.optuna", "OptunaPlugin", "trial", "metric_name"),
    e("helios.plugins.optuna", "OptunaPlugin.configure_trainer", "self", "trainer"),
    e("helios.plugins.optuna", "OptunaPlugin.configure_model", "self", "model"),
    e("helios.plugins.optuna", "OptunaPlugin.suggest", "self", "type_name", "name", "**kwargs"),
    e("helios.plugins.optuna", "OptunaPlugin.report_metrics", "self", "validation_cycle"),
    *[
        e("helios.plugins.optuna", f"OptunaPlugin.{m}", "self")
        for m in ("setup", "should_training_stop", "on_training_end", "check_pruned", "state_dict")
    ],
]

# -- PyBlaze 1.1.6 -------------------------------------------------------------------------------

N, CB = "pyblaze.nn", "pyblaze.nn.callbacks"

PYBLAZE: list[Entry] = [
    e(N, "BaseEngine", "model"),
    e(
        N,
        "BaseEngine.train",
        "self",
        "train_data",
        ("val_data", None),
        ("epochs", 20),
        ("val_iterations", None),
        ("eval_every", None),
        ("eval_train", False),
        ("eval_val", True),
        ("callbacks", None),
        ("metrics", None),
        ("gpu", "auto"),
        "**kwargs",
    ),
    e(
        N,
        "BaseEngine.evaluate",
        "self",
        "data",
        ("iterations", None),
        ("metrics", None),
        ("callbacks", None),
        ("gpu", "auto"),
        "**kwargs",
    ),
    e(
        N,
        "BaseEngine.predict",
        "self",
        "data",
        ("iterations", None),
        ("callbacks", None),
        ("gpu", "auto"),
        ("parallel", True),
        "**kwargs",
    ),
    e(N, "BaseEngine.supports_multiple_gpus", "self"),
    *[
        e(N, f"BaseEngine.{m}", "self", "data", "**kwargs")
        for m in ("train_batch", "eval_batch", "predict_batch")
    ],
    *exists(
        N,
        "BaseEngine.collate_predictions",
        "BaseEngine.collate_targets",
        "BaseEngine.collate_losses",
        "BaseEngine.forward",
    ),
    e(N, "SupervisedEngine", "model"),
    *exists(N, "Estimator.engine"),
    *[e(N, f"Estimator.{m}", "self", "*args", "**kwargs") for m in ("fit", "evaluate", "predict")],
    e(N, "Estimator.prepare_input", "self", "data"),
    e(N, "TrainingCallback.before_training", "self", "model", "num_epochs"),
    e(N, "TrainingCallback.before_epoch", "self", "current", "num_iterations"),
    e(N, "TrainingCallback.after_batch", "self", "train_loss"),
    e(N, "TrainingCallback.after_epoch", "self", "metrics"),
    e(N, "TrainingCallback.after_training", "self"),
    e(N, "PredictionCallback.before_predictions", "self", "model", "num_iterations"),
    e(N, "PredictionCallback.after_batch", "self", "*args"),
    e(N, "PredictionCallback.after_predictions", "self"),
    e(N, "CallbackException", "message", ("verbose", False)),
    e(N, "CallbackException.print", "self"),
    e(
        N,
        "EarlyStopping",
        ("metric", "val_loss"),
        ("patience", 5),
        ("restore_best", False),
        ("minimize", True),
    ),
    e(N, "EpochProgressLogger", ("file", None)),
    e(N, "BatchProgressLogger", ("file", None)),
    e(N, "PredictionProgressLogger", ("file", None)),
    e(N, "SynchronizationCallback", "push_queue", "pull_queue"),
    e(N, "ModelSharingCallback", "shared_model"),
    e(N, "ModelSaverCallback", "directory", ("file_template", "model_epoch-{}")),
    e(N, "LearningRateScheduler", "scheduler", ("after_batch", False)),
    e(N, "ParameterScheduler", "parameter", "schedule", ("after_batch", False)),
    e(N, "NeptuneTracker", "experiment"),
    e(N, "TensorboardTracker", "local_dir"),
    *exists(N, "TensorboardTracker.writer"),
    e(N, "History", "duration", "metrics"),
    *exists(N, "History.keys", "History.__len__"),
    e(N, "History.save", "self", "file"),
    e(N, "History.load", "file"),
    e(N, "History.cat", "h1", "h2"),
    e(N, "Evaluation", "metrics", ("weights", None)),
    *exists(N, "Evaluation.keys", "Evaluation.__getitem__", "Evaluation.__contains__"),
    e(N, "Evaluation.to_dict", "self"),
    e(N, "Evaluation.with_prefix", "self", "prefix"),
    e(N, "Evaluation.merge", "e1", "e2", "*more"),
    e(N, "NoiseDataset", "noise_type", "dimension"),
    e(N, "DataParallel", "model", ("device_ids", None), ("output_device", None), ("dim", 0)),
    e(N, "Config", "**kwargs"),
    e(N, "Config.is_valid", "self"),
    e(N, "Config.save", "self", "file"),
    e(N, "Config.load", "file"),
    *exists(N, "Configurable.num_parameters", "Configurable.num_trainable_parameters"),
    e(N, "Configurable.save", "self", "file"),
    e(N, "Configurable.load", "file"),
    e(N, "WeightedBCELoss", ("labels", None), ("ignore_index", None)),
    e(
        N,
        "StackedLSTM",
        "input_size",
        "hidden_sizes",
        ("bias", True),
        ("batch_first", False),
        ("cudnn", True),
    ),
    e(N, "StackedLSTMCell", "input_size", "hidden_sizes", ("bias", True), ("cudnn", True)),
    *[
        e("pyblaze.nn.functional", f, "y_pred", "y_true")
        for f in ("accuracy", "average_precision", "roc_auc_score")
    ],
    *[e("pyblaze.nn.functional", f, "y_pred", "y_true", ("c", 1)) for f in ("precision", "recall")],
    e("pyblaze.nn.functional.metrics", "f1_score", "y_pred", "y_true", ("c", 1)),
    e(
        "pyblaze.nn.functional",
        "gumbel_softmax",
        "logits",
        ("tau", 1),
        ("hard", False),
        ("eps", 1e-10),
        ("dim", -1),
    ),
    e("pyblaze.nn.functional", "generate_noise", "shape", ("noise_type", "normal")),
    e("pyblaze.utils", "ProgressBar", "total", ("file", None), ("verbose", True)),
    *[e("pyblaze.utils", f"ProgressBar.{m}", "self") for m in ("start", "step")],
    e("pyblaze.utils", "ProgressBar.finish", "self", ("metrics", None)),
    e("pyblaze.utils", "ProgressBar.frac", "num", "denom"),
    e(
        "pyblaze.multiprocessing",
        "Vectorizer",
        "worker_func",
        ("worker_init", None),
        ("callback_func", None),
        ("num_workers", -1),
        "**kwargs",
    ),
    e("pyblaze.multiprocessing", "Vectorizer.process", "self", "items", "*args"),
    e(
        "pyblaze.optim.lamb",
        "LAMB",
        "params",
        ("lr", 1e-3),
        ("betas", (0.9, 0.999)),
        ("eps", 1e-8),
        ("weight_decay", 0),
        ("lr_decay", 0),
    ),
    e("pyblaze.utils.torch", "gpu_device", "gpu"),
    e("pyblaze.utils.torch", "to_device", "device", "*args"),
    e("pyblaze.utils.torch", "share_memory", "*args"),
    e("pyblaze.utils.torch", "pin_memory", "*args"),
    *exists("pyblaze.utils.stdlib", "cached_property"),
    e("pyblaze.utils.stdlib", "flatten", "nested"),
    e("pyblaze.utils.numpy", "find_contexts", "array", "context_size", ("exclude_pivot", False)),
    e("pyblaze.utils.stdmp", "terminate", "*processes", ("force", True)),
    *exists("pyblaze.utils.stdio", "ProgressBar"),
]

# The 1.1.6 module paths: each must import and offer the same objects as the public namespace.
MODULE_PATHS = {
    "pyblaze.nn.engine": (
        "pyblaze.nn",
        ["BaseEngine", "SupervisedEngine", "History", "Evaluation"],
    ),
    "pyblaze.nn.engine.base": ("pyblaze.nn", ["BaseEngine"]),
    "pyblaze.nn.engine.supervised": ("pyblaze.nn", ["SupervisedEngine"]),
    "pyblaze.nn.engine.wrappers": ("pyblaze.nn", ["History", "Evaluation"]),
    "pyblaze.nn.utils": ("pyblaze.nn", ["Config", "Configurable", "Estimator", "DataParallel"]),
    "pyblaze.nn.utils.estimator": ("pyblaze.nn", ["Estimator"]),
    "pyblaze.nn.modules": ("pyblaze.nn", ["WeightedBCELoss", "StackedLSTM", "StackedLSTMCell"]),
    "pyblaze.nn.callbacks": (
        "pyblaze.nn",
        [
            "TrainingCallback",
            "PredictionCallback",
            "CallbackException",
            "EarlyStopping",
            "EpochProgressLogger",
            "BatchProgressLogger",
            "PredictionProgressLogger",
            "SynchronizationCallback",
            "ModelSharingCallback",
            "ModelSaverCallback",
            "LearningRateScheduler",
            "ParameterScheduler",
            "NeptuneTracker",
            "TensorboardTracker",
        ],
    ),
    "pyblaze.nn.callbacks.logging": (
        "pyblaze.nn",
        ["EpochProgressLogger", "BatchProgressLogger", "PredictionProgressLogger"],
    ),
    "pyblaze.nn.data": ("pyblaze.nn", ["NoiseDataset"]),
    "pyblaze.nn.data.extensions": ("pyblaze.nn.data", ["loader", "random_split"]),
    "pyblaze.utils.stdio": ("pyblaze.utils", ["ProgressBar"]),
}


def _resolve(module_name: str, dotted: str) -> Any:
    obj: Any = importlib.import_module(module_name)
    for part in [p for p in dotted.split(".") if p]:
        # On classes keep properties and static/class methods as declared.
        declared = isinstance(obj, type) and part in vars(obj)
        obj = vars(obj)[part] if declared else getattr(obj, part)
    return obj


def _signature(obj: Any) -> inspect.Signature:
    if isinstance(obj, staticmethod):
        return inspect.signature(obj.__func__)
    if isinstance(obj, classmethod):  # without cls
        signature = inspect.signature(obj.__func__)
        return signature.replace(parameters=list(signature.parameters.values())[1:])
    return inspect.signature(obj)  # for a class: its constructor, without self


def _same_default(documented: Any, ours: Any) -> bool:
    if documented is ANY:
        return ours is not inspect.Parameter.empty
    if hasattr(ours, "name") and hasattr(ours, "value") and isinstance(documented, str):
        return bool(ours.name == documented)  # an enum member documented by name
    if isinstance(documented, float) and isinstance(ours, int | float):
        return documented == ours
    return type(documented) is type(ours) and documented == ours


def check(entry: Entry) -> None:
    obj = _resolve(entry.module, entry.name)
    if entry.params is None:
        return
    params = list(_signature(obj).parameters.values())
    kinds = inspect.Parameter
    position = 0
    for name, default in entry.params:
        if name.startswith("**"):
            assert any(p.kind == kinds.VAR_KEYWORD for p in params), (entry, "**kwargs")
            continue
        if name.startswith("*"):
            assert any(p.kind == kinds.VAR_POSITIONAL for p in params), (entry, name)
            position = next(i for i, p in enumerate(params) if p.kind == kinds.VAR_POSITIONAL) + 1
            continue
        assert position < len(params), f"{entry}: parameter {name!r} is missing"
        ours = params[position]
        if ours.kind == kinds.VAR_POSITIONAL and default is R:
            continue  # a documented positional taken by our *args
        assert ours.name == name, f"{entry}: expected {name!r} at position {position}, got {ours}"
        if default is not R:
            assert _same_default(default, ours.default), (
                f"{entry}: {name} defaults to {ours.default!r}, documented {default!r}"
            )
        position += 1
    for extra in params[position:]:
        assert (
            extra.kind in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
            or extra.default is not inspect.Parameter.empty
        ), f"{entry}: our extra parameter {extra} has no default"


def _entry_id(entry: Entry) -> str:
    return f"{entry.module}:{entry.name or '<module>'}"


@pytest.mark.parametrize("entry", HELIOS + PYBLAZE, ids=_entry_id)
def test_documented_name(entry: Entry) -> None:
    check(entry)


@pytest.mark.parametrize("entry", OPTUNA, ids=_entry_id)
def test_documented_optuna_name(entry: Entry) -> None:
    pytest.importorskip("optuna")
    check(entry)


@pytest.mark.parametrize("path", sorted(MODULE_PATHS))
def test_pyblaze_1_1_6_module_paths(path: str) -> None:
    public, names = MODULE_PATHS[path]
    module = importlib.import_module(path)
    for name in names:
        assert getattr(module, name) is getattr(importlib.import_module(public), name), name
        assert name in getattr(module, "__all__", [name]), name


def test_dataset_extensions_are_installed() -> None:
    from torch.utils.data import Dataset

    import pyblaze.nn  # noqa: F401

    check(Entry("torch.utils.data", "Dataset.loader", (("self", R), ("**kwargs", R))))
    check(
        Entry(
            "torch.utils.data", "Dataset.random_split", (("self", R), ("*sizes", R), ("seed", None))
        )
    )
    assert callable(Dataset.loader)


def test_the_checker_fails_on_a_dropped_name_or_changed_default() -> None:
    with pytest.raises(AttributeError):
        check(e("helios.core.utils", "no_such_function"))
    with pytest.raises(AssertionError, match="defaults to 200, documented 100"):
        check(e("helios.core.utils", "AverageTimer", ("sliding_window", 100)))
    with pytest.raises(AssertionError, match="expected 'seed2' at position 0, got seed"):
        check(
            e("helios.core.rng", "seed_rngs", ("seed", None), ("skip_torch", False))._replace(
                params=(("seed2", R),)
            )
        )
    assert pathlib.Path(__file__).name == "test_documented_surface.py"
