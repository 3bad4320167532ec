"""Files a user or a store hands us are hostile until checked: loading runs no code, and a
checkpoint folder never makes helios write or delete outside itself.

Each test plants a real payload in a real checkpoint folder (a pickle whose unpickling
would create a marker file, names that climb out of the folder, a lock file that is a
symbolic link) and checks, through the public API, that nothing ran and nothing outside
the folder changed.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pathlib
import pickle
import shutil
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt
from helios.trainer.checkpoint import read_checkpoint, retention
from helios.trainer.checkpoint.shard_index import ShardIndexError, load_shard_index
from helios.trainer.run_folder import LOCK_NAME

UNIT, ACCUMULATION = "epoch", 1


def _fit(workdir: pathlib.Path, total: int, **options: Any) -> tuple[bool, job.ResumeModel]:
    model = job.ResumeModel()
    trainer = job.make_trainer(workdir, UNIT, total, ACCUMULATION, **options)
    return trainer.fit(model, job.ResumeDataModule()), model


def _name(epoch: int) -> str:
    return f"{job.SAVE_NAME}_epoch_{epoch}_iter_{3 * epoch}.pth"


# -- a planted shard index ------------------------------------------------------------------


class _Call:
    """Pickles as a call of ``function(*args)``: what a hostile pickle runs on load."""

    def __init__(self, function: Any, *args: Any) -> None:
        self.function, self.args = function, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


def _hostile_indexes(marker: pathlib.Path) -> dict[str, bytes]:
    """Shard indexes whose unpickling would create ``marker``, in three disguises."""
    from torch.distributed.checkpoint.metadata import Metadata

    inside = Metadata(state_dict_metadata={}, planner_data={"x": _Call(os.mkdir, str(marker))})
    return {
        "a bare call": pickle.dumps(_Call(os.mkdir, str(marker))),
        "a call inside a real index": pickle.dumps(inside),
        # A dotted name inside a module whose other names an index may use.
        "a method of an allowed module": pickle.dumps(_Call(pathlib.Path.mkdir, marker)),
    }


def _plant_sharded_checkpoint(folder: pathlib.Path, index: bytes) -> pathlib.Path:
    """A ``.dcp`` folder newer than every checkpoint: a real helios.pth, a hostile index."""
    hlt.register_trainer_types_for_safe_load()
    newest = hlt.find_last_checkpoint(folder)
    assert newest is not None
    contents = torch.load(newest, weights_only=True)
    contents["sharded_parts"] = ["model"]
    del contents["model"]
    planted = folder / f"{job.SAVE_NAME}_epoch_9_iter_99.dcp"
    planted.mkdir()
    torch.save(contents, planted / "helios.pth")
    (planted / ".metadata").write_bytes(index)
    return planted


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("trained")
    ok, _ = _fit(workdir, 2)
    assert ok
    return workdir


@pytest.mark.parametrize("disguise", ["a bare call", "a call inside a real index"])
def test_a_planted_shard_index_never_runs_in_fit_test_or_export(
    disguise: str,
    trained: pathlib.Path,
    tmp_path: pathlib.Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    workdir = tmp_path / "run"
    shutil.copytree(trained, workdir)
    folder = job.checkpoint_dir(workdir)
    marker = tmp_path / "payload-ran"
    planted = _plant_sharded_checkpoint(folder, _hostile_indexes(marker)[disguise])
    capsys.readouterr()

    ok, model = _fit(workdir, 3)
    assert not marker.exists()
    assert ok is False and model.records == []  # refused before training, not skipped
    err = capsys.readouterr().err
    assert f"the shard index {planted / '.metadata'} names posix.mkdir" in err
    assert "it was not loaded" in err

    trainer = job.make_trainer(workdir, UNIT, 3, ACCUMULATION)
    assert trainer.test(job.ResumeModel(), job.ResumeDataModule()) is False
    assert not marker.exists()

    with pytest.raises(ShardIndexError, match=r"names posix\.mkdir"):
        hlt.export_full_checkpoint(planted)
    with pytest.raises(ShardIndexError, match=r"names posix\.mkdir"):
        read_checkpoint(planted)
    assert not marker.exists()
    assert not (folder / f"{job.SAVE_NAME}_epoch_9_iter_99.pth").exists()


def test_a_dotted_name_in_an_allowed_module_is_refused(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "payload-ran"
    index = _hostile_indexes(marker)["a method of an allowed module"]
    with pytest.raises(ShardIndexError, match=r"names pathlib\.Path\.mkdir"):
        load_shard_index(io.BytesIO(index))
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning")
def test_a_shard_index_read_through_a_url_is_read_safely_too(tmp_path: pathlib.Path) -> None:
    # The reader a store's backend hands Distributed Checkpoint (fsspec, here file://):
    # a real index loads; a planted one, global or rank-local, runs nothing.
    import torch.distributed.checkpoint as dcp

    from helios.trainer.checkpoint.shard_index import shard_reader

    folder = tmp_path / "c.dcp"
    dcp.save({"w": torch.arange(4.0)}, checkpoint_id=folder, no_dist=True)
    loaded = {"w": torch.zeros(4)}
    dcp.load(loaded, storage_reader=shard_reader(f"file://{folder}"), no_dist=True)
    assert torch.equal(loaded["w"], torch.arange(4.0))

    marker = tmp_path / "payload-ran"
    index = _hostile_indexes(marker)["a bare call"]
    (folder / ".metadata").write_bytes(index)
    (folder / "__0.metadata").write_bytes(index)  # the rank-local index torch falls back to
    with pytest.raises(dcp.CheckpointException, match=r"names posix\.mkdir") as raised:
        dcp.load(loaded, storage_reader=shard_reader(f"file://{folder}"), no_dist=True)
    assert "__0.metadata names posix.mkdir" in str(raised.value)
    assert not marker.exists()


# -- names from the retention record and the index ------------------------------------------


def test_a_hostile_retention_record_deletes_nothing_outside_the_runs_checkpoints(
    tmp_path: pathlib.Path,
) -> None:
    options = {"chkpt_keep_last": 1}
    ok, _ = _fit(tmp_path, 2, **options)
    assert ok
    folder = job.checkpoint_dir(tmp_path)
    assert sorted(p.name for p in folder.glob("*.pth")) == [_name(2)]
    # Victims: a folder and a file outside, files inside that are not this run's checkpoints.
    victim_dir = tmp_path / "victim_dir"
    (victim_dir / "sub").mkdir(parents=True)
    (victim_dir / "sub" / "data.txt").write_text("keep me")
    victim_file = tmp_path / "victim.pth"
    victim_file.write_text("keep me")
    notes = folder / "notes.txt"
    notes.write_text("keep me")
    other_run = folder / "other_epoch_1_iter_3.pth"
    other_run.write_text("keep me")
    hidden = folder / f".{job.SAVE_NAME}_epoch_1_iter_3.pth"
    hidden.write_text("keep me")
    hostile = [
        "../../victim_dir",
        str(victim_file),
        f"../{folder.name}/../../victim.pth",
        "notes.txt",
        other_run.name,
        hidden.name,
        f"{job.SAVE_NAME}_epoch_1_iter_3.pth/../../../victim_dir",
        "",
    ]
    hlt.register_trainer_types_for_safe_load()
    contents = torch.load(folder / _name(2), weights_only=True)
    record = contents["checkpoint_retention"]
    record["pending_deletion"] = hostile
    record["entries"] = [
        {"name": name, "epoch": 1, "iteration": 1, "metric": None} for name in hostile
    ] + record["entries"]
    torch.save(contents, folder / _name(2))

    with pytest.warns(RuntimeWarning, match="not a checkpoint name of this run"):
        ok, _ = _fit(tmp_path, 4, **options)
    assert ok
    assert (victim_dir / "sub" / "data.txt").read_text() == "keep me"
    assert victim_file.read_text() == "keep me"
    for kept in (notes, other_run, hidden):
        assert kept.read_text() == "keep me"
    assert sorted(p.name for p in folder.glob(f"{job.SAVE_NAME}_*.pth")) == [_name(4)]
    # The index names only this run's checkpoints.
    index = json.loads((folder / retention.INDEX_NAME).read_text())
    assert [c["name"] for c in index["checkpoints"]] == [_name(4)]


@pytest.mark.parametrize(
    "best",
    [
        "../../victim.pth",
        "/etc/hostname",
        "{absolute}",
        "sub/resume_epoch_1_iter_3.pth",
        "..",
        ".",
        "resume_epoch_1_iter_3.txt",
        "notes.pth",
        ["resume_epoch_1_iter_3.pth"],
    ],
)
def test_find_best_checkpoint_names_only_checkpoints_inside_the_folder(
    best: Any, tmp_path: pathlib.Path
) -> None:
    folder = tmp_path / "chkpt" / "resume"
    (folder / "sub").mkdir(parents=True)
    victim = tmp_path / "victim.pth"
    victim.write_text("x")
    for path in (folder / "notes.pth", folder / "sub" / "resume_epoch_1_iter_3.pth"):
        path.write_text("x")
    (folder / "resume_epoch_1_iter_3.txt").write_text("x")
    if best == "{absolute}":
        best = str(victim)
    index = {"version": 1, "best": best, "newest": best, "checkpoints": []}
    (folder / retention.INDEX_NAME).write_text(json.dumps(index))
    assert hlt.find_best_checkpoint(folder) is None


def test_find_best_checkpoint_finds_files_and_sharded_folders(tmp_path: pathlib.Path) -> None:
    folder = tmp_path / "resume"
    folder.mkdir()
    for best in ("resume_epoch_2_iter_6.pth", "resume_epoch_2_iter_6_acc=0.9.pth"):
        (folder / best).write_text("x")
        (folder / retention.INDEX_NAME).write_text(json.dumps({"best": best}))
        assert hlt.find_best_checkpoint(folder) == folder / best
    (folder / "resume_epoch_3_iter_9.dcp").mkdir()
    (folder / retention.INDEX_NAME).write_text(json.dumps({"best": "resume_epoch_3_iter_9.dcp"}))
    assert hlt.find_best_checkpoint(folder) == folder / "resume_epoch_3_iter_9.dcp"
    # A name the index gives that is a link out of the folder is not followed.
    (folder / "resume_epoch_4_iter_12.pth").symlink_to(tmp_path / "elsewhere.pth")
    (tmp_path / "elsewhere.pth").write_text("x")
    (folder / retention.INDEX_NAME).write_text(json.dumps({"best": "resume_epoch_4_iter_12.pth"}))
    assert hlt.find_best_checkpoint(folder) is None


# -- the lock file --------------------------------------------------------------------------


def test_a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_untouched(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = job.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    (folder / LOCK_NAME).symlink_to(target)
    capsys.readouterr()
    ok, model = _fit(tmp_path, 1)
    assert ok is False and model.records == []
    assert target.read_text() == "precious"
    err = capsys.readouterr().err
    assert f"the lock file {folder / LOCK_NAME} is a symbolic link" in err
    assert "remove it" in err
    # A dangling link is refused as well, and creates nothing at its target.
    (folder / LOCK_NAME).unlink()
    (folder / LOCK_NAME).symlink_to(tmp_path / "created.txt")
    ok, _ = _fit(tmp_path, 1)
    assert ok is False
    assert not (tmp_path / "created.txt").exists()


def test_a_lock_file_that_is_not_a_regular_file_is_refused(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = job.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    os.mkfifo(folder / LOCK_NAME)
    capsys.readouterr()
    ok, _ = _fit(tmp_path, 1)
    assert ok is False
    err = capsys.readouterr().err
    assert f"the lock file {folder / LOCK_NAME} is not a regular file (a FIFO)" in err


@pytest.mark.parametrize(
    "holder",
    [
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"pid": [[[[1]]]], "host": {"a": 1}, "started": None, "command": 3}),
        json.dumps({"pid": 1}),
        "\udcff not utf-8",
        "",
    ],
    ids=["deeply nested", "wrong types", "missing fields", "not utf-8", "empty"],
)
def test_an_unreadable_holder_is_an_unknown_holder(
    holder: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = job.checkpoint_dir(tmp_path)
    folder.mkdir(parents=True)
    path = folder / LOCK_NAME
    with open(path, "wb") as file:
        file.write(holder.encode("utf-8", "surrogateescape"))
        file.flush()
        fcntl.flock(file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        capsys.readouterr()
        ok, _ = _fit(tmp_path, 1)
    assert ok is False
    err = capsys.readouterr().err
    assert f"the checkpoint folder {folder} is in use by another run" in err
    assert f"held by an unknown holder: {path} names no readable process" in err
    assert "RecursionError" not in err


def test_a_lock_record_read_elsewhere_is_parsed_as_untrusted_data() -> None:
    # The functions a lock kept elsewhere (a store's lock object) reads its record with.
    from helios.trainer.run_folder import describe_holder, parse_holder

    deep = ("[" * 100_000 + "]" * 100_000).encode()
    assert parse_holder(deep) is None
    assert parse_holder(b"\xff") is None and parse_holder(b"[1]") is None
    record = {"pid": 7, "host": "h", "started": "s", "command": "c", "lease_seconds": 60}
    assert parse_holder(json.dumps(record).encode()) == record
    assert (
        describe_holder(json.dumps(record).encode(), "s3://b/run")
        == "pid 7 on host h, started s: c"
    )
    assert describe_holder(deep, "s3://b/run/.helios-run.lock") == (
        "held by an unknown holder: s3://b/run/.helios-run.lock names no readable process "
        "(the holder is still starting, or the file was written by something else)"
    )


# -- a logger state naming a file elsewhere -------------------------------------------------


def test_a_logger_state_naming_a_file_elsewhere_never_rewrites_it(tmp_path: pathlib.Path) -> None:
    from helios.loggers import CSVLogger

    def fit(crash_at: int | None = None) -> bool:
        model = job.ResumeModel(crash_at=crash_at)
        logger = CSVLogger(tmp_path / "logs" / "metrics.csv")
        trainer = job.make_trainer(
            tmp_path, UNIT, 2, ACCUMULATION, loggers=[logger], print_frequency=1
        )
        return trainer.fit(model, job.ResumeDataModule())

    assert fit(crash_at=5) is False  # epoch 1 saved at step 3, then a crash
    victim = tmp_path / "victim.csv"
    text = "step,x\n" + "".join(f"{step},{step}\n" for step in range(1, 10))
    victim.write_text(text)
    hlt.register_trainer_types_for_safe_load()
    checkpoint = job.checkpoint_dir(tmp_path) / _name(1)
    contents = torch.load(checkpoint, weights_only=True)
    contents["loggers"][0]["path"] = f"{tmp_path}/logs/../victim.csv"
    torch.save(contents, checkpoint)
    with pytest.warns(RuntimeWarning, match="outside this logger's folder"):
        assert fit()
    assert victim.read_text() == text
