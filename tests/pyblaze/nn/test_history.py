import pathlib

import pytest
import torch

import pyblaze.nn as xnn


def test_evaluation_access_by_attribute_item_and_in() -> None:
    ev = xnn.Evaluation({"accuracy": torch.tensor(0.25), "loss": 1.5, "_private": 1})
    assert ev.accuracy == pytest.approx(0.25)
    assert isinstance(ev.accuracy, float)
    assert ev["loss"] == 1.5
    assert "loss" in ev
    assert "missing" not in ev
    assert ev.keys == ["_private", "accuracy", "loss"]
    assert ev.to_dict() == {"accuracy": 0.25, "loss": 1.5}
    with pytest.raises(AttributeError, match=r"'missing'.*available metrics: \['_private'"):
        _ = ev.missing
    with pytest.raises(KeyError, match="missing"):
        _ = ev["missing"]


def test_evaluation_averages_lists_with_weights() -> None:
    assert xnn.Evaluation({"loss": [1.0, 4.0]}).loss == pytest.approx(2.5)
    assert xnn.Evaluation({"loss": [1.0, 4.0]}, weights=[3, 1]).loss == pytest.approx(1.75)
    with pytest.raises(ValueError, match="2 values but 3 weights"):
        xnn.Evaluation({"loss": [1.0, 4.0]}, weights=[1, 1, 1])


def test_evaluation_prefix_and_merge() -> None:
    merged = xnn.Evaluation.merge(
        xnn.Evaluation({"a": 1.0, "b": 2.0}), xnn.Evaluation({"b": 3.0}).with_prefix("val_")
    )
    assert merged.to_dict() == {"a": 1.0, "b": 2.0, "val_b": 3.0}


def test_evaluation_rejects_tensor_with_several_values() -> None:
    with pytest.raises(ValueError, match="metric 'acc' must be a single number"):
        xnn.Evaluation({"acc": torch.zeros(3)})


def make_history() -> xnn.History:
    return xnn.History(
        2.0,
        [
            {"micro_train_loss": [3.0, 2.0], "train_loss": 2.5, "val_loss": 2.2},
            {"micro_train_loss": [1.5, 1.0], "train_loss": 1.25, "val_loss": 1.1},
        ],
    )


def test_history_flattens_micro_losses_and_lists_epochs() -> None:
    history = make_history()
    assert len(history) == 2
    assert history.keys == ["micro_train_loss", "train_loss", "val_loss"]
    assert history.micro_train_loss == [3.0, 2.0, 1.5, 1.0]
    assert history.train_loss == [2.5, 1.25]
    assert history.val_loss == [2.2, 1.1]
    assert history.to_dict()["micro_train_loss"] == [3.0, 2.0, 1.5, 1.0]
    with pytest.raises(AttributeError, match=r"no metric 'val_accuracy'.*\['micro_train_loss'"):
        _ = history.val_accuracy


def test_empty_history_says_so() -> None:
    with pytest.raises(AttributeError, match="history is empty"):
        _ = xnn.History(0.0, []).train_loss


def test_history_save_load_and_cat(tmp_path: pathlib.Path) -> None:
    history = make_history()
    history.save(tmp_path / "sub" / "history.json")
    loaded = xnn.History.load(tmp_path / "sub" / "history.json")
    assert loaded.to_dict() == history.to_dict()
    assert loaded.duration == 2.0
    joined = xnn.History.cat(history, loaded)
    assert len(joined) == 4
    assert joined.duration == 4.0
    assert joined.train_loss == [2.5, 1.25, 2.5, 1.25]
