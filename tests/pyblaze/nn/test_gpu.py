import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from pyblaze.nn.engines import resolve_gpu


@pytest.fixture
def three_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    free = [10, 50, 30]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (free[i], 100))


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.usefixtures("three_gpus")
def test_resolution_with_gpus() -> None:
    assert resolve_gpu("auto") == [0, 1, 2]
    assert resolve_gpu("auto", multiple=False) == [1]
    assert resolve_gpu(True) == [1]
    assert resolve_gpu(False) == []
    assert resolve_gpu(2) == [2]
    assert resolve_gpu([2, 0, 2]) == [2, 0]
    assert resolve_gpu((1,)) == [1]


@pytest.mark.usefixtures("three_gpus")
def test_invalid_gpu_values_name_the_argument() -> None:
    with pytest.raises(
        ValueError, match=r"gpu=3 is not a valid GPU id; .* 3 GPU\(s\), with ids 0 to 2"
    ):
        resolve_gpu(3)
    with pytest.raises(ValueError, match="gpu=-1 is not a valid GPU id"):
        resolve_gpu(-1)
    with pytest.raises(ValueError, match=r"gpu=\[\] selects no device"):
        resolve_gpu([])
    with pytest.raises(ValueError, match="gpu='cuda' is not a valid setting"):
        resolve_gpu("cuda")
    with pytest.raises(TypeError, match=r"gpu=\[0, 'x'\] must list GPU ids as ints"):
        resolve_gpu([0, "x"])
    with pytest.raises(TypeError, match="gpu must be 'auto', True, False"):
        resolve_gpu(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"gpu=\[0, 1\] lists several GPUs"):
        resolve_gpu([0, 1], multiple=False)


@pytest.mark.usefixtures("no_gpu")
def test_resolution_without_cuda() -> None:
    assert resolve_gpu("auto") == []
    assert resolve_gpu(False) == []
    with pytest.raises(ValueError, match="gpu=True requests a GPU, but CUDA is not available"):
        resolve_gpu(True)
    with pytest.raises(ValueError, match="gpu=0 requests GPU 0, but CUDA is not available"):
        resolve_gpu(0)


def test_fit_checks_gpu_before_training(make_model, dataset) -> None:
    model = make_model()
    with pytest.raises(TypeError, match="gpu must be 'auto', True, False"):
        model.fit(
            dataset.loader(batch_size=8),
            epochs=1,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            loss=nn.CrossEntropyLoss(),
            gpu=None,
        )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Requires: [GPUs>=1]")
def test_fit_evaluate_predict_on_a_gpu(make_model, dataset) -> None:
    model = make_model()
    optimizer = torch.optim.Adam(model.parameters())
    history = model.fit(
        dataset.loader(batch_size=8),
        val_data=dataset.loader(batch_size=8),
        epochs=2,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        gpu=True,
    )
    assert len(history) == 2
    assert next(model.parameters()).device.type == "cpu"
    assert all(s["exp_avg"].device.type == "cpu" for s in optimizer.state.values())
    inputs = TensorDataset(dataset.tensors[0])
    assert model.predict(inputs.loader(batch_size=8), gpu=0).shape == (30, 3)
