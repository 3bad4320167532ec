import dataclasses
import pathlib
import pickle
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest
import torch

import helios.core as hlc
from helios.core import Registry


def test_registry_registration_forms() -> None:
    reg = Registry("things")

    @reg.register
    class Bare:
        pass

    @reg.register(suffix="v2")
    def called() -> int:
        return 2

    def plain() -> int:
        return 3

    assert reg.register(plain) is plain
    assert reg.register(plain, suffix="x") is plain

    assert reg.get("Bare") is Bare
    assert reg.get("called_v2") is called
    assert reg.get("called", suffix="v2") is called
    assert reg.get("plain") is plain
    assert reg.get("plain_x") is plain
    assert "Bare" in reg and "nope" not in reg
    assert sorted(reg.keys()) == ["Bare", "called_v2", "plain", "plain_x"]
    assert dict(iter(reg)) == {
        "Bare": Bare,
        "called_v2": called,
        "plain": plain,
        "plain_x": plain,
    }
    assert len(reg) == 4
    assert str(reg) == "things"


def test_registry_duplicate_and_unknown_names() -> None:
    reg = Registry("losses")

    def zeta() -> None: ...

    def alpha() -> None: ...

    reg.register(zeta)
    reg.register(alpha)

    def alpha_dup() -> None: ...

    alpha_dup.__name__ = "alpha"
    with pytest.raises(ValueError, match=r"'alpha' already exists in the 'losses'.*alpha, zeta"):
        reg.register(alpha_dup)
    assert reg.get("alpha") is alpha
    with pytest.raises(KeyError, match=r"'beta' found in the 'losses'.*alpha, zeta"):
        reg.get("beta")
    with pytest.raises(KeyError, match=r"'beta'"):
        reg.get("beta", suffix="v1")


def test_update_all_registries_imports_registering_modules(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "regpkg_core_utils"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from helios.core import Registry\nREG = Registry('test')\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "models.py").write_text(
        textwrap.dedent(
            """
            from regpkg_core_utils import REG

            @REG.register
            class Net:
                pass
            """
        )
    )
    (pkg / "sub" / "deep.py").write_text(
        textwrap.dedent(
            """
            from regpkg_core_utils import REG

            @REG.register(suffix="deep")
            def fn():
                pass
            """
        )
    )
    (pkg / "helpers.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in list(sys.modules):
        if name.startswith("regpkg_core_utils"):
            monkeypatch.delitem(sys.modules, name)

    import regpkg_core_utils  # type: ignore[import-not-found]

    assert len(regpkg_core_utils.REG) == 0
    hlc.update_all_registries(pkg)
    assert sorted(regpkg_core_utils.REG.keys()) == ["Net", "fn_deep"]
    assert "regpkg_core_utils.helpers" not in sys.modules
    assert "regpkg_core_utils.sub.deep" in sys.modules

    with pytest.raises(RuntimeError, match="not a Python package"):
        hlc.update_all_registries(tmp_path)
    with pytest.raises(RuntimeError, match="valid directory"):
        hlc.update_all_registries(tmp_path / "missing")
    for name in list(sys.modules):
        if name.startswith("regpkg_core_utils"):
            monkeypatch.delitem(sys.modules, name)


def test_average_timer() -> None:
    timer = hlc.AverageTimer(sliding_window=2)
    assert timer.get_average_time() == 0
    timer.start()
    time.sleep(0.02)
    timer.record()
    first = timer.get_average_time()
    assert 0.015 < first < 1.0
    timer.record()
    assert 0 < timer.get_average_time() < first
    timer.record()  # third record exceeds the window: running sums restart
    assert timer.get_average_time() < first
    time.sleep(0.02)
    timer.record()
    # Only this record counts after the restart (~0.02 s); without it the mean is ~0.01 s.
    assert timer.get_average_time() > 0.015


def test_chdir_context(tmp_path: pathlib.Path) -> None:
    start = pathlib.Path.cwd()
    with hlc.ChdirContext(tmp_path) as previous:
        assert previous == start
        assert pathlib.Path.cwd() == tmp_path.resolve()
    assert pathlib.Path.cwd() == start
    with pytest.raises(ZeroDivisionError), hlc.ChdirContext(tmp_path):
        _ = 1 / 0
    assert pathlib.Path.cwd() == start


@dataclasses.dataclass
class _Payload:
    value: int


@pytest.fixture
def _restore_safe_globals() -> Iterator[None]:
    saved = list(torch.serialization.get_safe_globals())
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


@pytest.mark.usefixtures("_restore_safe_globals")
def test_safe_torch_load(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "payload.pt"
    torch.save({"t": torch.ones(2), "p": _Payload(3)}, path)
    with pytest.raises(pickle.UnpicklingError):
        hlc.safe_torch_load(path)
    torch.serialization.add_safe_globals([_Payload])
    loaded = hlc.safe_torch_load(path, map_location="cpu")
    assert loaded["p"] == _Payload(3)
    assert torch.equal(loaded["t"], torch.ones(2))
    with pytest.raises(TypeError, match="weights_only"):
        hlc.safe_torch_load(path, weights_only=False)


def test_get_from_optional() -> None:
    assert hlc.get_from_optional(1) == 1
    assert hlc.get_from_optional(0, raise_on_empty=True) == 0
    with pytest.raises(AssertionError):
        hlc.get_from_optional(None)
    with pytest.raises(RuntimeError, match="optional cannot be empty"):
        hlc.get_from_optional(None, raise_on_empty=True)


def test_convert_to_list() -> None:
    values = [1, 2]
    assert hlc.convert_to_list(values) is values
    assert hlc.convert_to_list((1, 2)) == [1, 2]
    assert hlc.convert_to_list(3) == [3]


def test_get_env_info_str() -> None:
    text = hlc.get_env_info_str()
    assert f"PyTorch: {torch.__version__}" in text
    assert "Helios: " in text
    assert "#" + "=" * 75 + "#" in text


def test_core_exports() -> None:
    import helios.core.utils as utils

    functions = [
        "AverageTimer",
        "ChdirContext",
        "Registry",
        "convert_to_list",
        "get_env_info_str",
        "get_from_optional",
        "safe_torch_load",
        "update_all_registries",
    ]
    modules = ["cuda", "distributed", "logging", "precision", "rng"]
    assert sorted(hlc.__all__) == sorted(functions + modules)
    for name in functions:
        assert getattr(hlc, name) is getattr(utils, name)
    for name in modules:
        assert getattr(hlc, name).__name__ == f"helios.core.{name}"
