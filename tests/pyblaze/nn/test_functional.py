import math

import pytest
import torch

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
