import math

import pytest
import torch

import pyblaze.nn as xnn
import pyblaze.nn.functional as X  # noqa: N812 - the seed's name


def test_accuracy_of_scores_probabilities_and_labels() -> None:
    y_true = torch.tensor([0, 1, 2, 1])
    scores = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 1.0, 0.5]])
    assert X.accuracy(scores, y_true).item() == pytest.approx(3 / 4)
    probabilities = torch.tensor([0.2, 0.7, 0.5, 0.4])
    assert X.accuracy(probabilities, torch.tensor([0, 1, 1, 1])).item() == pytest.approx(3 / 4)
    assert X.accuracy(torch.tensor([0, 1, 2, 2]), y_true).item() == pytest.approx(3 / 4)


def test_precision_recall_f1_hand_computed() -> None:
    y_pred = torch.tensor([1, 1, 1, 0, 0, 1])
    y_true = torch.tensor([1, 0, 1, 1, 0, 1])
    # TP = 3, FP = 1, FN = 1
    assert X.precision(y_pred, y_true).item() == pytest.approx(3 / 4)
    assert X.recall(y_pred, y_true).item() == pytest.approx(3 / 4)
    assert X.f1_score(y_pred, y_true).item() == pytest.approx(3 / 4)
    # class 0: TP = 1 (index 4), FP = 1 (index 3), FN = 1 (index 1)
    assert X.precision(y_pred, y_true, c=0).item() == pytest.approx(1 / 2)
    assert X.recall(y_pred, y_true, c=0).item() == pytest.approx(1 / 2)
    assert X.f1_score(y_pred, y_true, c=0).item() == pytest.approx(1 / 2)
    # precision 1/3, recall 1/2 -> F1 = 2 * (1/6) / (5/6) = 0.4
    y_true2 = torch.tensor([1, 0, 0, 1])
    y_pred2 = torch.tensor([1, 1, 1, 0])
    assert X.f1_score(y_pred2, y_true2).item() == pytest.approx(0.4)


def test_precision_without_predicted_positives_is_nan() -> None:
    assert math.isnan(X.precision(torch.tensor([0, 0]), torch.tensor([1, 0])).item())


def test_ranking_metrics_hand_computed() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    assert X.roc_auc_score(scores, labels).item() == pytest.approx(0.75)
    assert X.average_precision(scores, labels).item() == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranking_metrics_match_sklearn_with_ties(seed: int) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    generator = torch.Generator().manual_seed(seed)
    # Rounded scores create many ties, which both metrics must handle like scikit-learn.
    scores = torch.round(torch.rand(200, generator=generator) * 10) / 10
    labels = (torch.rand(200, generator=generator) < 0.3 + 0.4 * scores).long()
    expected_auc = metrics.roc_auc_score(labels.numpy(), scores.numpy())
    expected_ap = metrics.average_precision_score(labels.numpy(), scores.numpy())
    assert X.roc_auc_score(scores, labels).item() == pytest.approx(expected_auc, abs=1e-12)
    assert X.average_precision(scores, labels).item() == pytest.approx(expected_ap, abs=1e-12)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="same number of samples"):
        X.accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"y_pred must be a 1-D tensor .* or a 2-D"):
        X.accuracy(torch.zeros(2, 2, 2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"y_pred must be a torch.Tensor"):
        X.accuracy([0, 1], torch.tensor([0, 1]))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="only one class"):
        X.roc_auc_score(torch.tensor([0.1, 0.2]), torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="no positive"):
        X.average_precision(torch.tensor([0.1, 0.2]), torch.tensor([0, 0]))
    with pytest.raises(ValueError, match=r"binary labels .* \[0, 2\]"):
        X.roc_auc_score(torch.tensor([0.1, 0.2]), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match=r"pass y_pred\[:, 1\]"):
        X.average_precision(torch.zeros(2, 2), torch.tensor([0, 1]))


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
