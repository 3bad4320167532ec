"""Training a classifier with PyBlaze: the tutorial of seed 002, runnable.

The tutorial trains a small convolutional network on CIFAR-10 through ``Estimator.fit``
with early stopping, batch progress logging and an accuracy metric, plots the losses and
evaluates the model on the test set. The code below is the tutorial's, unchanged, except
for where the data comes from:

* ``--dataset digits`` (default): scikit-learn's bundled 8x8 digits, scaled to 3x32x32
  images (bilinear interpolation, the gray channel repeated three times), with 20% held
  out as the test set. Runs in about a minute on two CPU cores.
* ``--dataset cifar10``: the tutorial's torchvision CIFAR-10 (needs torchvision; downloads
  the data into ``--data-root``).

The two plots are saved as ``loss.png`` and ``validation.png`` into the output folder.

Usage::

    python examples/pyblaze_classifier.py [--dataset digits|cifar10] [--output DIR]

Needs the ``examples`` extra: ``pip install "helios-blaze[examples]"`` (scikit-learn and
matplotlib).
"""

from __future__ import annotations

import argparse
import os
import pathlib

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.utils.data import Dataset, TensorDataset

import pyblaze.nn as xnn
import pyblaze.nn.functional as X


def load_digits_datasets() -> tuple[Dataset, Dataset]:
    """Return (train_val_dataset, test_dataset) built from scikit-learn's digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError(
            'the digits data needs scikit-learn: pip install "helios-blaze[examples]"'
        ) from e
    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    all_data = TensorDataset(images, labels)
    train_val_dataset, test_dataset = all_data.random_split(0.8, 0.2, seed=0)
    return train_val_dataset, test_dataset


def load_cifar10_datasets(root: pathlib.Path) -> tuple[Dataset, Dataset]:
    """Return (train_val_dataset, test_dataset) of the tutorial (needs torchvision)."""
    try:
        import torchvision
        import torchvision.transforms as transforms
    except ImportError as e:
        raise ImportError("--dataset cifar10 needs torchvision: pip install torchvision") from e
    train_val_dataset = torchvision.datasets.CIFAR10(
        root=str(root), train=True, download=True, transform=transforms.ToTensor()
    )
    test_dataset = torchvision.datasets.CIFAR10(
        root=str(root), train=False, download=True, transform=transforms.ToTensor()
    )
    return train_val_dataset, test_dataset


class Model(xnn.Estimator, nn.Module):
    __engine__ = xnn.SupervisedEngine

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(400, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 400)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = self.fc3(x)
        return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["digits", "cifar10"], default="digits")
    parser.add_argument("--data-root", type=pathlib.Path, default=pathlib.Path("~/Downloads"))
    parser.add_argument("--output", type=pathlib.Path, default=pathlib.Path("pyblaze_output"))
    parser.add_argument("--epochs", type=int, default=20)
    # One argument trains the tutorial's model in mixed precision: "bf16-mixed" (CPU or a
    # recent GPU) or "fp16-mixed" (with a grad scaler).
    parser.add_argument("--precision", choices=["32", "bf16-mixed", "fp16-mixed"], default="32")
    # The tutorial uses 4 workers; more workers than cores only adds overhead.
    parser.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1))
    args = parser.parse_args()

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('the plots need matplotlib: pip install "helios-blaze[examples]"') from e

    torch.manual_seed(0)
    if args.dataset == "cifar10":
        train_val_dataset, test_dataset = load_cifar10_datasets(args.data_root.expanduser())
    else:
        train_val_dataset, test_dataset = load_digits_datasets()

    # -- the tutorial ---------------------------------------------------------------------
    train_dataset, val_dataset = train_val_dataset.random_split(0.8, 0.2)

    train_loader = train_dataset.loader(batch_size=256, num_workers=args.num_workers, shuffle=True)
    val_loader = val_dataset.loader(batch_size=2048)
    test_loader = test_dataset.loader(batch_size=2048)

    model = Model()

    optimizer = optim.Adam(model.parameters())
    history = model.fit(
        train_loader,
        val_data=val_loader,
        epochs=args.epochs,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        callbacks=[xnn.BatchProgressLogger(), xnn.EarlyStopping(patience=3)],
        metrics={"accuracy": X.accuracy},
        precision=args.precision,
    )

    args.output.mkdir(parents=True, exist_ok=True)
    all_losses = history.micro_train_loss
    plt.figure(dpi=150)
    plt.plot(range(len(all_losses)), all_losses)
    plt.savefig(args.output / "loss.png")

    plt.figure(dpi=150)
    plt.plot(range(len(history)), history.train_loss, label="Training Loss")
    plt.plot(range(len(history)), history.val_loss, label="Validation Loss")
    plt.legend()
    plt.savefig(args.output / "validation.png")

    evaluation = model.evaluate(
        test_loader,
        callbacks=[xnn.PredictionProgressLogger()],
        metrics={"accuracy": X.accuracy},
    )
    print(f"Our model achieves an accuracy of {evaluation.accuracy:.2%}.")
    print(f"Plots saved to {args.output / 'loss.png'} and {args.output / 'validation.png'}")


if __name__ == "__main__":
    main()
