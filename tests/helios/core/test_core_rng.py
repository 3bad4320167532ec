import pathlib
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from helios.core import rng


def _draw_all() -> dict[str, list[int]]:
    return {
        "torch": torch.randint(1000, [5]).tolist(),
        "rand": [random.randint(0, 999) for _ in range(5)],
        "numpy": rng.get_default_numpy_rng().generator.integers(0, 1000, 5).tolist(),
        "numpy_legacy": np.random.randint(0, 1000, 5).tolist(),
    }


def test_default_seed() -> None:
    assert rng.get_default_seed() == 6691


def test_seed_rngs_pinned_sequences() -> None:
    rng.seed_rngs()
    assert torch.randint(10, [10]).tolist() == [0, 1, 8, 6, 5, 7, 3, 9, 6, 9]
    assert [random.randint(0, 9) for _ in range(10)] == [0, 9, 2, 3, 6, 6, 2, 6, 7, 4]
    numpy_gen = rng.get_default_numpy_rng().generator
    assert numpy_gen.integers(0, 10, 10).tolist() == [3, 2, 3, 4, 4, 3, 1, 3, 3, 1]


def test_seed_rngs_seeds_numpy_legacy_and_can_skip_torch() -> None:
    rng.seed_rngs(123)
    legacy = np.random.randint(0, 1000, 5).tolist()
    np.random.seed(123)
    assert np.random.randint(0, 1000, 5).tolist() == legacy

    torch.manual_seed(5)
    expected = torch.randint(1000, [5])
    torch.manual_seed(5)
    rng.seed_rngs(7, skip_torch=True)
    assert torch.equal(torch.randint(1000, [5]), expected)


def test_seed_rngs_large_seed_and_bad_seed() -> None:
    rng.seed_rngs(2**40 + 3)
    np.random.seed((2**40 + 3) % 2**32)
    expected = np.random.randint(0, 1000, 3).tolist()
    rng.seed_rngs(2**40 + 3)
    assert np.random.randint(0, 1000, 3).tolist() == expected
    with pytest.raises(TypeError, match=r"seed must be an int or None, got '1'"):
        rng.seed_rngs("1")  # type: ignore[arg-type]


def test_default_numpy_rng_wrapper() -> None:
    wrapper = rng.DefaultNumpyRNG(42)
    generator = wrapper.generator
    state = wrapper.state_dict()
    first = generator.integers(0, 100, 5).tolist()
    wrapper.load_state_dict(state)
    assert wrapper.generator is generator
    assert generator.integers(0, 100, 5).tolist() == first
    assert first == np.random.default_rng(42).integers(0, 100, 5).tolist()

    rng.create_default_numpy_rng([1, 2])
    assert (
        rng.get_default_numpy_rng().generator.integers(0, 100, 3).tolist()
        == np.random.default_rng([1, 2]).integers(0, 100, 3).tolist()
    )


def test_rng_state_round_trip_through_weights_only_file(tmp_path: pathlib.Path) -> None:
    rng.seed_rngs(99)
    _draw_all()  # move every generator away from its seeded state
    np.random.standard_normal()  # leave a cached gaussian in the legacy state
    state = rng.get_rng_state_dict()
    if torch.cuda.is_available():
        assert len(state["cuda"]) == torch.cuda.device_count()
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    expected = _draw_all()
    expected_gauss = np.random.standard_normal()

    rng.seed_rngs(1)  # scramble everything
    loaded = torch.load(path, weights_only=True)
    rng.load_rng_state_dict(loaded)
    assert _draw_all() == expected
    assert np.random.standard_normal() == expected_gauss


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_rng_state_restores_cuda() -> None:
    rng.seed_rngs(3)
    state = rng.get_rng_state_dict()
    expected = torch.randint(1000, [5], device="cuda").tolist()
    torch.cuda.manual_seed_all(0)
    rng.load_rng_state_dict(state)
    assert torch.randint(1000, [5], device="cuda").tolist() == expected


def test_load_rng_state_dict_rejects_incomplete_state() -> None:
    with pytest.raises(ValueError, match=r"missing the keys \['rand', 'numpy'\]"):
        rng.load_rng_state_dict({"torch": torch.get_rng_state()})


@pytest.mark.slow
def test_fresh_process_has_no_default_numpy_rng() -> None:
    code = textwrap.dedent(
        """
        from helios.core import rng
        for fn in (rng.get_default_numpy_rng, rng.get_rng_state_dict):
            try:
                fn()
            except RuntimeError as exc:
                assert "create_default_numpy_rng" in str(exc), exc
            else:
                raise SystemExit(f"{fn.__name__} did not raise")
        rng.create_default_numpy_rng(5)
        keys = set(rng.get_rng_state_dict()) - {"cuda"}
        assert sorted(keys) == ["numpy", "numpy_legacy", "rand", "torch"], keys
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr + result.stdout
