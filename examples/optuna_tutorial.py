"""Tune the digits classifier with Optuna through helios's OptunaPlugin.

This is seed 003's Optuna example on data that ships with scikit-learn: the CIFAR-10
tutorial's ``Net``, with the widths of its two hidden layers and the learning rate chosen by
Optuna, trained on the 8x8 digits resized to 3x32x32 (see ``digits_classifier.py``).

The study lives in an SQLite file, uses a seeded TPE sampler and a median pruner, and
checkpoints its sampler in every trial. Run it from the repository root::

    python examples/optuna_tutorial.py [--root DIR] [--trials N] [--epochs E]

It runs ``N`` trials of ``E`` epochs (about a minute on 2 CPU cores with the defaults),
prints each trial's result and the best parameters. Everything goes to ``DIR`` (default
``./optuna_run``): the study database ``study.db`` and its backups, the sampler checkpoints
in ``samplers/`` and a checkpoint folder per trial in ``chkpt/``.

Kill it (Ctrl+C, or ``kill -9``) in the middle of a trial and run it again with the same
``--root``: :py:func:`~helios.plugins.optuna.resume_study` queues the interrupted trial
again with its parameters and the values it had reported, the trial resumes training from
its last checkpoint, and the study goes on until ``N`` trials have finished. The sampler
comes back from its last checkpoint. After Ctrl+C the trial is queued at once; after
``kill -9`` once its heartbeat is 20 s old (before that it may still be alive): run again
sooner and it is picked up when the next trial starts after that. Copies of the script
started on one ``--root`` at the same time share the study (each runs its own trials)
without touching each other's running trial.

Needs Optuna and scikit-learn: ``pip install "helios-blaze[tune,examples]"``.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import typing

import torch
import torch.nn.functional as F
from torch import nn

import helios.data as hld
import helios.model as hlm
import helios.optim as hlo
import helios.trainer as hlt
from helios.core import logging, rng

try:
    import optuna
    from optuna.trial import TrialState
except ImportError:
    sys.exit(
        'error: this example needs Optuna. Install the tune extra: pip install "helios-blaze[tune]"'
    )

import helios.plugins.optuna as hlpo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _digits

BATCH_SIZE = 32
TRIALS = 8
EPOCHS = 4


class DigitsDataModule(hld.DataModule):
    """The digits, split 80/20 with a fixed seed into training and validation sets."""

    def setup(self) -> None:
        """Create the training and validation datasets."""
        train, valid = _digits.digits_splits(valid_fraction=0.2, seed=0)
        params = hld.DataLoaderParams(batch_size=BATCH_SIZE, shuffle=True, drop_last=True)
        self._train_dataset = self._create_dataset(train, params)
        params = hld.DataLoaderParams(batch_size=BATCH_SIZE)
        self._valid_dataset = self._create_dataset(valid, params)


class Net(nn.Module):
    """The CIFAR-10 tutorial's classifier with tunable hidden widths.

    Args:
        l1: the width of the first hidden layer.
        l2: the width of the second hidden layer.
    """

    def __init__(self, l1: int = 120, l2: int = 84) -> None:
        """Create the classifier."""
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, l1)
        self.fc2 = nn.Linear(l1, l2)
        self.fc3 = nn.Linear(l2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute the label for the given image."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ClassifierModel(hlm.Model):
    """The tutorial's model, built with the hyper-parameters the trial chose.

    The validation accuracy goes into :py:attr:`metrics` and is reported to the trial
    through the OptunaPlugin after every validation cycle. The metrics are also saved in
    the checkpoints, so a trial that resumes an already finished training still returns its
    accuracy.

    Args:
        tune_params: the widths ``l1`` and ``l2`` of the hidden layers and the learning rate
            ``lr``.
    """

    def __init__(self, tune_params: dict[str, typing.Any]) -> None:
        """Create the model."""
        super().__init__("classifier")
        self._tune_params = tune_params

    def setup(self, fast_init: bool = False) -> None:
        """Create the network, loss and optimizer; find the plug-in to report to."""
        plugin = self.trainer.plugins[hlpo.OptunaPlugin.plugin_id]
        assert isinstance(plugin, hlpo.OptunaPlugin)
        self._plugin = plugin

        self._net = Net(l1=self._tune_params["l1"], l2=self._tune_params["l2"]).to(self.device)
        self._criterion = nn.CrossEntropyLoss().to(self.device)
        self._optimizer = hlo.create_optimizer(
            "SGD", self._net.parameters(), lr=self._tune_params["lr"], momentum=0.9
        )

    def load_state_dict(self, state_dict: dict[str, typing.Any], fast_init: bool = False) -> None:
        """Restore the model from a saved checkpoint."""
        self._net.load_state_dict(state_dict["net"])
        self._optimizer.load_state_dict(state_dict["optimizer"])
        self.metrics.update(state_dict["metrics"])

    def state_dict(self) -> dict[str, typing.Any]:
        """Return the state dict of the model."""
        return {
            "net": self._net.state_dict(),
            "optimizer": self._optimizer.state_dict(),
            "metrics": dict(self.metrics),
        }

    def train(self) -> None:
        """Set the model to train."""
        self._net.train()

    def train_step(self, batch: typing.Any, state: hlt.TrainingState) -> None:
        """Forward and backward training passes."""
        inputs, labels = (x.to(self.device) for x in batch)
        self._optimizer.zero_grad()
        loss = self._criterion(self._net(inputs), labels)
        loss.backward()
        self._optimizer.step()
        self._loss_items["loss"] = loss

    def eval(self) -> None:
        """Set the model to eval."""
        self._net.eval()

    def on_validation_start(self, validation_cycle: int) -> None:
        """Reset the counts of labels seen and labels right."""
        super().on_validation_start(validation_cycle)
        self._val_scores["total"] = 0
        self._val_scores["correct"] = 0

    def valid_step(self, batch: typing.Any, step: int) -> None:
        """Count the correctly classified images of a batch."""
        images, labels = (x.to(self.device) for x in batch)
        predicted = self._net(images).argmax(dim=1)
        self._val_scores["total"] += labels.size(0)
        self._val_scores["correct"] += (predicted == labels).sum().item()

    def on_validation_end(self, validation_cycle: int) -> None:
        """Compute the accuracy and report it to the trial."""
        accuracy = 100 * self._val_scores["correct"] / self._val_scores["total"]
        self.metrics["accuracy"] = accuracy
        logging.get_root_logger().info(f"[Validation {validation_cycle}] accuracy: {accuracy:.2f}")
        self._plugin.report_metrics(validation_cycle)
        super().on_validation_end(validation_cycle)

    def on_training_end(self) -> None:
        """Send the metrics to the main process when the ranks were spawned."""
        if self.is_distributed and self.rank == 0 and self.trainer.queue is not None:
            self.trainer.queue.put(dict(self.metrics))


def objective(trial: optuna.Trial, root: pathlib.Path, epochs: int) -> float:
    """Train one classifier with the trial's hyper-parameters; return its accuracy."""
    plugin = hlpo.OptunaPlugin(trial, "accuracy")
    # The kinds and ranges could as well come from a config file or the command line.
    tune_params = {
        "l1": plugin.suggest("categorical", "l1", choices=[16, 32, 64, 128]),
        "l2": plugin.suggest("categorical", "l2", choices=[16, 32, 64, 128]),
        "lr": plugin.suggest("float", "lr", low=1e-3, high=1e-1, log=True),
    }
    # Saved once the trial has drawn its parameters: if the study is killed during this
    # trial, the resumed study re-runs it with the same parameters and the next trial draws
    # exactly what it would have drawn without the interruption.
    hlpo.checkpoint_sampler(trial, root / "samplers")

    datamodule = DigitsDataModule()
    model = ClassifierModel(tune_params)
    trainer = hlt.Trainer(
        run_name="digits-tuning",
        train_unit=hlt.TrainingUnit.EPOCH,
        total_steps=epochs,
        valid_frequency=1,
        chkpt_frequency=1,
        use_cpu=True,
        enable_deterministic=True,
        enable_progress_bar=False,
        print_banner=False,
        chkpt_root=root / "chkpt",
    )
    plugin.configure_trainer(trainer)
    plugin.configure_model(model)
    if not trainer.fit(model, datamodule):
        raise RuntimeError(f"training of trial {trial.number} failed; see the traceback above")
    plugin.check_pruned()

    if trainer.queue is None:
        accuracy: float = model.metrics["accuracy"]
        return accuracy
    metrics = trainer.queue.get()
    return float(metrics["accuracy"])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=pathlib.Path,
        default=pathlib.Path.cwd() / "optuna_run",
        help="folder of the study, sampler and trial checkpoints (default: ./optuna_run)",
    )
    parser.add_argument(
        "--trials", type=int, default=TRIALS, help=f"trials to finish (default: {TRIALS})"
    )
    parser.add_argument(
        "--epochs", type=int, default=EPOCHS, help=f"epochs per trial (default: {EPOCHS})"
    )
    args = parser.parse_args(argv)
    for name in ("trials", "epochs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, but received {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run (or resume) the study and print the best trial."""
    args = parse_args(argv)
    root = args.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    # The network is tiny: a second intra-op thread gains nothing but contention.
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    sampler = hlpo.restore_sampler(root / "samplers")
    if sampler is None:
        sampler = optuna.samplers.TPESampler(seed=rng.get_default_seed())
    study_args = {
        "study_name": "digits-tuning",
        "storage": f"sqlite:///{root / 'study.db'}",
        "load_if_exists": True,
        "direction": "maximize",
        "sampler": sampler,
        "pruner": optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=1),
    }
    # A killed run leaves its last trial RUNNING: count it as failed so it runs again.
    study = hlpo.resume_study(study_args, failed_states=(TrialState.FAIL, TrialState.RUNNING))

    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    queued = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if done or queued:
        print(f"Resuming the study: {done} trials finished, {queued} queued again")
    study.optimize(
        lambda trial: objective(trial, root, args.epochs), n_trials=max(args.trials - done, 0)
    )

    for trial in study.get_trials(deepcopy=False, states=finished):
        state = "pruned at" if trial.state == TrialState.PRUNED else "finished with"
        origin = trial.user_attrs.get("hl:id")
        resumed = f" (resumed trial {origin})" if origin is not None else ""
        print(f"Trial {trial.number} {state} {trial.value:.2f}%{resumed}: {trial.params}")
    best = study.best_trial
    print(f"Best trial: {best.number}, accuracy {best.value:.2f}%, params {best.params}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
