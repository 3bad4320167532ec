import logging as std_logging
import pathlib
import re
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from helios.core import logging

LINE_RE = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\] \[(\w+)\]: (.*)$")


@pytest.fixture(autouse=True)
def _close_loggers() -> Iterator[None]:
    yield
    logging.close_default_loggers()


def _read_messages(path: pathlib.Path) -> list[tuple[str, str]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for line in lines:
        match = LINE_RE.match(line)
        assert match is not None, line
        out.append((match.group(1), match.group(2)))
    return out


def _run_cycle(log_file: pathlib.Path, tag: str) -> None:
    logging.create_default_loggers(enable_tensorboard=False)
    logging.restore_default_loggers(log_path=log_file)
    root = logging.get_root_logger()
    root.info(f"{tag} info")
    root.warning(f"{tag} warning")
    root.error(f"{tag} error")
    logging.close_default_loggers()


def test_two_runs_in_one_process_are_separate(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    _run_cycle(first, "run1")
    _run_cycle(second, "run2")

    assert _read_messages(first) == [
        ("INFO", "run1 info"),
        ("WARNING", "run1 warning"),
        ("ERROR", "run1 error"),
    ]
    assert _read_messages(second) == [
        ("INFO", "run2 info"),
        ("WARNING", "run2 warning"),
        ("ERROR", "run2 error"),
    ]
    out = capsys.readouterr().out
    # Warnings and errors go to stdout exactly once each; INFO only to the file.
    assert out.count("run1 error") == 1
    assert out.count("run2 error") == 1
    assert out.count("run2 warning") == 1
    assert "info" not in out
    # (pytest attaches its capture handlers to a non-propagating logger that exists already.)
    handlers = std_logging.getLogger("helios").handlers
    assert [h for h in handlers if not type(h).__module__.startswith("_pytest")] == []


def test_setup_appends_to_existing_file(tmp_path: pathlib.Path) -> None:
    log_file = tmp_path / "nested" / "run.log"
    _run_cycle(log_file, "a")
    _run_cycle(log_file, "b")
    assert [msg for _, msg in _read_messages(log_file)] == [
        "a info",
        "a warning",
        "a error",
        "b info",
        "b warning",
        "b error",
    ]


def test_root_logger_forwards_kwargs_and_logs_exceptions(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.RootLogger()
    root.setup(tmp_path / "x.log")
    assert root.log_file == tmp_path / "x.log"
    assert root.logger is std_logging.getLogger("helios")
    root.info("value %d", stacklevel=1, extra={"unused": 1})
    root.error("with stack", stack_info=True)
    try:
        raise ValueError("kaboom")
    except ValueError:
        root.exception("caught it")
    root.flush()
    text = (tmp_path / "x.log").read_text(encoding="utf-8")
    root.close()

    assert "[INFO]: value %d" in text
    assert "Stack (most recent call last)" in text
    assert "[ERROR]: caught it" in text
    assert "ValueError: kaboom" in text
    out = capsys.readouterr().out
    assert "ValueError: kaboom" in out
    assert "value" not in out


def test_root_logger_without_file_prints_only_warnings(
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = logging.RootLogger()
    root.setup(None)
    assert root.log_file is None
    root.info("hidden")
    root.warning("visible")
    root.close()
    out = capsys.readouterr().out
    assert re.search(r"\[WARNING\]: visible", out)
    assert "hidden" not in out


def test_default_logger_registry_errors() -> None:
    assert not logging.is_root_logger_active()
    with pytest.raises(KeyError, match="create_default_loggers"):
        logging.get_root_logger()
    with pytest.raises(RuntimeError, match="create_default_loggers"):
        logging.restore_default_loggers()
    with pytest.raises(RuntimeError, match="create_default_loggers"):
        logging.setup_default_loggers("run")
    assert logging.get_tensorboard_writer() is None

    logging.create_default_loggers(enable_tensorboard=False)
    assert logging.is_root_logger_active()
    assert isinstance(logging.get_root_logger(), logging.RootLogger)
    assert logging.get_tensorboard_writer() is None
    logging.close_default_loggers()
    assert not logging.is_root_logger_active()


def test_get_default_log_name() -> None:
    assert re.fullmatch(
        r"cifar_[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}", logging.get_default_log_name("cifar")
    )
    assert re.fullmatch(r"_[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}", logging.get_default_log_name(""))


def test_setup_default_loggers_creates_paths(tmp_path: pathlib.Path) -> None:
    log_root = tmp_path / "a" / "logs"
    runs_root = tmp_path / "b" / "runs"
    logging.create_default_loggers(enable_tensorboard=True)
    logging.setup_default_loggers("exp", log_root=log_root, runs_root=runs_root)
    log_file = logging.get_root_logger().log_file
    writer = logging.get_tensorboard_writer()
    assert writer is not None and log_file is not None
    assert log_file.parent == log_root
    assert re.fullmatch(r"exp_[A-Z][a-z]{2}\d{2}_\d{2}-\d{2}-\d{2}\.log", log_file.name)
    assert writer.run_path == runs_root / log_file.stem
    logging.get_root_logger().info("hello")
    logging.flush_default_loggers()
    assert "hello" in log_file.read_text(encoding="utf-8")
    assert writer.run_path.is_dir()


def test_setup_default_loggers_keeps_same_second_runs_apart(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging, "get_default_log_name", lambda name: f"{name}_fixed")
    paths = []
    for i in range(3):
        logging.create_default_loggers(enable_tensorboard=True)
        logging.setup_default_loggers(
            "exp", log_root=tmp_path / "logs", runs_root=tmp_path / "runs"
        )
        logging.get_root_logger().info(f"run {i}")
        writer = logging.get_tensorboard_writer()
        assert writer is not None
        paths.append((logging.get_root_logger().log_file, writer.run_path))
        logging.close_default_loggers()

    names = ["exp_fixed", "exp_fixed_1", "exp_fixed_2"]
    assert paths == [(tmp_path / "logs" / f"{n}.log", tmp_path / "runs" / n) for n in names]
    for i, name in enumerate(names):
        assert [m for _, m in _read_messages(tmp_path / "logs" / f"{name}.log")] == [f"run {i}"]


def test_setup_default_loggers_without_roots_writes_nothing(tmp_path: pathlib.Path) -> None:
    logging.create_default_loggers(enable_tensorboard=True)
    logging.setup_default_loggers("exp")
    assert logging.get_root_logger().log_file is None
    writer = logging.get_tensorboard_writer()
    assert writer is not None
    with pytest.raises(AssertionError):
        _ = writer.run_path


def _event_accumulator(path: pathlib.Path):  # type: ignore[no-untyped-def]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(path), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.mark.filterwarnings("ignore:`torch.jit.trace:DeprecationWarning")
def test_tensorboard_writer_writes_real_events(tmp_path: pathlib.Path) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2
    from tensorboard.util import tensor_util

    run_path = tmp_path / "runs" / "r"
    writer = logging.TensorboardWriter()
    writer.setup(run_path)
    assert writer.run_path == run_path
    writer.add_scalar("train/loss", 1.5, 0)
    writer.add_scalar("train/loss", torch.tensor(0.5), 1)
    writer.add_scalars("grp", {"a": 1.0, "b": 2.0}, 0)
    writer.add_text("note", "hello", 0)
    writer.add_image("img", torch.rand(3, 4, 4), 0)
    writer.add_images("imgs", torch.rand(2, 3, 4, 4), 0)
    writer.add_image("img_hwc", torch.rand(4, 4, 3), 0, dataformats="HWC")
    writer.add_pr_curve("pr", torch.tensor([0, 1, 1, 0]), torch.tensor([0.1, 0.9, 0.8, 0.3]), 0)
    model = nn.Linear(2, 3)
    weight_before = model.weight.detach().clone()
    writer.add_graph(model, torch.randn(1, 2))
    writer.add_hparams({"lr": 0.1, "bs": 4}, {"hparam/acc": 0.9})
    writer.flush()
    writer.close()
    writer.add_scalar("after/close", 1.0)  # no writer any more: ignored

    assert torch.equal(model.weight, weight_before)
    acc = _event_accumulator(run_path)
    tags = acc.Tags()
    assert [
        (e.step, float(tensor_util.make_ndarray(e.tensor_proto))) for e in acc.Tensors("train/loss")
    ] == [(0, 1.5), (1, 0.5)]
    assert "after/close" not in tags["tensors"] + tags["scalars"]
    assert acc.Tensors("note/text_summary")[0].tensor_proto.string_val == [b"hello"]
    assert sorted(tags["images"]) == ["img", "img_hwc", "imgs"]
    assert "pr" in tags["tensors"]
    assert tags["graph"]
    assert [e.value for e in acc.Scalars("hparam/acc")] == [pytest.approx(0.9)]
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hparams["lr"].number_value == pytest.approx(0.1)
    assert hparams["bs"].number_value == 4
    # add_scalars writes one sub-run per key.
    grp_a = _event_accumulator(run_path / "grp_a")
    assert [e.value for e in grp_a.Scalars("grp")] == [1.0]


def test_tensorboard_writer_add_figure(tmp_path: pathlib.Path) -> None:
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    writer = logging.TensorboardWriter()
    writer.setup(tmp_path)
    fig = plt.figure()
    plt.plot([0, 1], [1, 0])
    writer.add_figure("fig", fig, 3)
    writer.close()
    assert not plt.fignum_exists(fig.number)
    assert _event_accumulator(tmp_path).Tags()["images"] == ["fig"]


def test_tensorboard_writer_without_setup_is_a_no_op(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    writer = logging.TensorboardWriter()
    writer.add_scalar("x", 1.0, 0)
    writer.add_text("t", "x")
    writer.add_hparams({"a": 1}, {"m": 1.0})
    writer.add_graph(nn.Linear(1, 1), [torch.zeros(1, 1)])
    writer.flush()
    writer.close()
    with pytest.raises(AssertionError):
        _ = writer.run_path
    assert list(tmp_path.iterdir()) == []


def test_add_graph_rejects_bad_input() -> None:
    writer = logging.TensorboardWriter()
    with pytest.raises(TypeError, match=r"input_to_model.*dict"):
        writer.add_graph(nn.Linear(1, 1), {"x": torch.zeros(1)})  # type: ignore[arg-type]
