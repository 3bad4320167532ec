import pytest
import torch

from helios.core import cuda

HAS_CUDA = torch.cuda.is_available()


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised without CUDA")
def test_requires_cuda_support_raises_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="expected CUDA support but none was found"):
        cuda.requires_cuda_support()


@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_requires_cuda_support_passes_with_cuda() -> None:
    cuda.requires_cuda_support()


@pytest.mark.parametrize("initial", [True, False])
def test_disable_cudnn_benchmark_context(initial: bool) -> None:
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = initial
    try:
        with cuda.DisableCuDNNBenchmarkContext() as ctx:
            assert isinstance(ctx, cuda.DisableCuDNNBenchmarkContext)
            # Without CUDA the context leaves the flag alone.
            assert torch.backends.cudnn.benchmark is (False if HAS_CUDA else initial)
        assert torch.backends.cudnn.benchmark is initial
    finally:
        torch.backends.cudnn.benchmark = previous
