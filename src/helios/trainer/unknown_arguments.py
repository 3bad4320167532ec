"""An unknown Trainer argument gets an error that names the argument meant.

Users of Lightning, Keras and the Hugging Face Trainer type the names they know
(``max_epochs``, ``epochs``, ``lr``, ``precision=16``...). Python's own error says only that
the keyword is unexpected; :py:func:`check_known_arguments` says what helios calls it, or
where the setting lives instead (the learning rate belongs to the optimizer the model
builds). Names not in the table get the closest Trainer arguments by spelling.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, ParamSpec

P = ParamSpec("P")

_EPOCHS = 'use total_steps (with train_unit="epoch", the default)'
_STEPS = 'use total_steps with train_unit="iteration"'
_IN_SETUP = "is not a Trainer argument: create it in Model.setup"

# What users of other frameworks type, and what helios calls it (or where it lives).
SUGGESTIONS: Mapping[str, str] = {
    **dict.fromkeys(
        ("epochs", "max_epochs", "num_epochs", "n_epochs", "num_train_epochs"), _EPOCHS
    ),
    **dict.fromkeys(("max_steps", "steps", "num_steps", "max_iters", "iterations"), _STEPS),
    **dict.fromkeys(
        ("lr", "learning_rate"),
        "the learning rate belongs to the optimizer: torch.optim.AdamW(net.parameters(), "
        "lr=...) in Model.setup (a schedule: helios.scheduler, e.g. WarmupCosineLR)",
    ),
    **dict.fromkeys(("optimizer", "optimizers"), f"the optimizer {_IN_SETUP}"),
    **dict.fromkeys(("scheduler", "lr_scheduler"), f"the scheduler {_IN_SETUP}"),
    **dict.fromkeys(("model", "loss", "criterion"), f"the network and its loss {_IN_SETUP}"),
    **dict.fromkeys(
        ("batch_size", "per_device_train_batch_size", "train_batch_size"),
        "the batch size is a loader setting: hld.DataLoaderParams(batch_size=...) in "
        "DataModule.setup",
    ),
    **dict.fromkeys(
        ("fp16", "bf16", "amp", "mixed_precision", "use_amp", "half"),
        'use precision="fp16-mixed" or precision="bf16-mixed"',
    ),
    **dict.fromkeys(
        ("accumulate_grad_batches", "gradient_accumulation_steps", "grad_accum_steps"),
        'use accumulation_steps (with train_unit="iteration")',
    ),
    **dict.fromkeys(
        ("check_val_every_n_epoch", "val_check_interval", "eval_steps", "validation_freq"),
        "use valid_frequency",
    ),
    **dict.fromkeys(("save_steps", "every_n_epochs", "save_freq"), "use chkpt_frequency"),
    **dict.fromkeys(
        ("default_root_dir", "output_dir", "dirpath", "checkpoint_dir", "save_dir"),
        "use chkpt_root (checkpoints) and log_path / run_path (logs)",
    ),
    **dict.fromkeys(("patience", "early_stopping_patience"), "use early_stop_cycles"),
    **dict.fromkeys(
        ("metric_for_best_model", "monitor_metric"), "use monitor (or chkpt_best_metric)"
    ),
    **dict.fromkeys(("save_top_k", "save_total_limit"), "use chkpt_keep_best / chkpt_keep_last"),
    **dict.fromkeys(("seed", "random_state"), "use random_seed"),
    **dict.fromkeys(("log_every_n_steps", "logging_steps"), "use print_frequency"),
    **dict.fromkeys(("logger", "report_to"), "use loggers (a list of helios.loggers loggers)"),
    **dict.fromkeys(
        ("gradient_clip_val", "max_grad_norm", "clipnorm", "clip_grad_norm"),
        "clipping is a step of train_step: self.clip_gradients(optimizer, max_norm=...) "
        "before self.optimizer_step(optimizer)",
    ),
    "deterministic": "use enable_deterministic",
    "benchmark": "use enable_cudnn_benchmark",
    **dict.fromkeys(("compile", "torch_compile"), "use enable_compile"),
    **dict.fromkeys(("devices", "accelerator", "device", "no_cuda"), "use use_cpu / gpus"),
    **dict.fromkeys(
        ("strategy", "num_nodes"),
        "helios picks distributed training from gpus (one process per GPU) or from torchrun",
    ),
    "callbacks": "use plug-ins (helios.plugins.Plugin and its configure_trainer)",
    **dict.fromkeys(("verbose", "enable_model_summary"), "use print_banner / print_summaries"),
    **dict.fromkeys(
        ("resume_from_checkpoint", "ckpt_path"),
        "fit resumes from the newest checkpoint in chkpt_root by itself",
    ),
}


def checks_unknown_arguments(init: Callable[P, None]) -> Callable[P, None]:
    """Decorate the Trainer's ``__init__`` so an unknown keyword names the argument meant.

    The signature stays the real one for ``help()``, IDEs and the API pages
    (``functools.wraps``).

    Args:
        init: the ``__init__``.

    Returns:
        The checking ``__init__``.
    """
    known = frozenset(list(inspect.signature(init).parameters)[1:])

    @functools.wraps(init)
    def checked(*args: P.args, **kwargs: P.kwargs) -> None:
        if not known.issuperset(kwargs):
            check_known_arguments(init, kwargs)
        init(*args, **kwargs)

    return checked


def check_known_arguments(init: Callable[..., object], kwargs: Mapping[str, Any]) -> None:
    """Raise for a keyword the Trainer does not take, naming the argument meant.

    Args:
        init: the Trainer's ``__init__`` (its parameters are the known names).
        kwargs: the keyword arguments of the call.

    Raises:
        TypeError: for an unknown keyword, with the suggestion.
    """
    known = list(inspect.signature(init).parameters)[1:]
    unknown = [name for name in kwargs if name not in known]
    if not unknown:
        return
    lines = []
    for name in unknown:
        hint = SUGGESTIONS.get(name)
        if hint is None:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else None
        lines.append(f"{name} ({hint})" if hint else name)
    listed = "; ".join(lines)
    raise TypeError(
        f"Trainer got unknown argument(s): {listed}. The Trainer's arguments are listed in "
        "help(helios.trainer.Trainer)"
    )


__all__ = ["SUGGESTIONS", "check_known_arguments", "checks_unknown_arguments"]
