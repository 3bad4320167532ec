"""Load scikit-learn's digits as CIFAR-shaped tensors (shared by the examples).

The examples folder is not a package: scripts import this module by putting their own folder
on ``sys.path`` first.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
import torch.utils.data as tud

SKLEARN_MISSING = (
    "error: this example trains on scikit-learn's digits dataset, but scikit-learn is not "
    'installed. Install the examples extra: pip install "helios-blaze[examples]"'
)


def require_sklearn() -> None:
    """Exit with a message naming the extra to install when scikit-learn is missing.

    Raises:
        SystemExit: if scikit-learn cannot be imported.
    """
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit(SKLEARN_MISSING)


def load_digits_images() -> tuple[torch.Tensor, torch.Tensor]:
    """Load the 1797 digits as normalised 3x32x32 images with their labels.

    The 8x8 images (values 0..16) are scaled to [0, 1], resized to 32x32 with bilinear
    interpolation, repeated to 3 channels and normalised with mean and std 0.5 per channel,
    as the CIFAR-10 tutorial does with its images.

    Returns:
        The images, shape ``(N, 3, 32, 32)`` float32 in [-1, 1], and the labels, shape
        ``(N,)`` int64.

    Raises:
        SystemExit: if scikit-learn is not installed, with a message naming the extra.
    """
    require_sklearn()
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False)
    images = images.repeat(1, 3, 1, 1)
    images = (images - 0.5) / 0.5
    labels = torch.as_tensor(digits.target, dtype=torch.int64)
    return images.contiguous(), labels


def digits_splits(
    valid_fraction: float = 0.2, seed: int = 0
) -> tuple[tud.TensorDataset, tud.TensorDataset]:
    """Split the digits into fixed training and validation sets.

    Args:
        valid_fraction: the share of the images kept for validation.
        seed: the seed of the permutation, so the split is the same on every run.

    Returns:
        The training and validation datasets of ``(image, label)`` pairs.

    Raises:
        ValueError: if ``valid_fraction`` is not strictly between 0 and 1.
        SystemExit: if scikit-learn is not installed.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(
            f"error: expected valid_fraction to be in (0, 1), but received {valid_fraction!r}"
        )
    images, labels = load_digits_images()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    num_valid = round(len(labels) * valid_fraction)
    valid, train = order[:num_valid], order[num_valid:]
    return (
        tud.TensorDataset(images[train], labels[train]),
        tud.TensorDataset(images[valid], labels[valid]),
    )
