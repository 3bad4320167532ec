"""Checkpoints in an object store: a real S3 server (moto) on localhost, the real s3fs client.

The runs train ``resume_job``'s model (iteration unit, 9 iterations of 2 batches, a
checkpoint every iteration) with ``chkpt_root="s3://<bucket>/runs"``; the environment points
the client at the test server (``AWS_ENDPOINT_URL``), as a user's would at theirs.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import time
from typing import Any

import pytest
import resume_job as job
import torch

import helios.trainer as hlt
from helios.trainer.checkpoint import store, store_lock
from helios.trainer.checkpoint.locations import StorePath
from helios.trainer.checkpoint.shard_index import ShardIndexError
from helios.trainer.checkpoint.storage import open_folder
from helios.trainer.run_folder import CheckpointFolderError

pytestmark = pytest.mark.slow

UNIT, TOTAL, ACCUMULATION = "iteration", 9, 2


def _fit(
    root: Any, total: int = TOTAL, raising: tuple[type[Exception], ...] = (), **options: Any
) -> tuple[bool, job.ResumeModel]:
    model = job.ResumeModel(accumulation=ACCUMULATION)
    trainer = job.make_trainer(
        pathlib.Path("unused"), UNIT, total, ACCUMULATION, chkpt_root=root, **options
    )
    trainer.train_exceptions.extend([hlt.CheckpointWriteError, CheckpointFolderError, *raising])
    return trainer.fit(model, job.ResumeDataModule()), model


def _assert_same_weights(a: job.ResumeModel, b: job.ResumeModel) -> None:
    for key, value in a.net.state_dict().items():
        assert torch.equal(b.net.state_dict()[key], value), key


def _objects(url: str) -> list[str]:
    folder = open_folder(url)
    prefix = folder.key("")
    return sorted(p[len(prefix) :] for p in folder.fs.find(prefix))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> job.ResumeModel:
    """The uninterrupted run on a local folder."""
    ok, model = _fit(tmp_path_factory.mktemp("reference") / "chkpt")
    assert ok
    return model


def test_a_run_saves_to_s3_keeps_the_best_and_resumes_from_the_store(
    s3_bucket: str, reference: job.ResumeModel
) -> None:
    root = f"{s3_bucket}/runs"
    options = {"chkpt_keep_last": 1, "chkpt_keep_best": 1, "chkpt_best_metric": "score"}
    ok, _ = _fit(root, total=7, **options)
    assert ok
    folder = f"{root}/{job.SAVE_NAME}"
    objects = _objects(folder)
    checkpoints = [o for o in objects if o.endswith(".pth")]
    # the newest (iteration 7) and the best (score 0.9 from the validation at iteration 4)
    assert [c.split("_iter_")[1] for c in checkpoints] == ["4.pth", "7.pth"]
    assert [o for o in objects if o.endswith(".commit")] == [f"{c}.commit" for c in checkpoints]
    assert not [o for o in objects if o.endswith(".pending")]
    assert ".helios-run.lock" not in objects  # released at the end
    index = json.loads(open_folder(folder).cat("checkpoints.json"))
    assert index["best"] == checkpoints[0] and index["newest"] == checkpoints[1]

    newest = hlt.find_last_checkpoint(folder)
    assert isinstance(newest, StorePath) and newest == f"{folder}/{checkpoints[1]}"
    assert hlt.find_best_checkpoint(folder) == f"{folder}/{checkpoints[0]}"
    hlt.register_trainer_types_for_safe_load()
    assert hlt.checkpoint.read_checkpoint(newest)["training_state"].current_iteration == 7

    # A fresh machine: nothing local, the same chkpt_root; the run continues to 9 exactly.
    ok, resumed = _fit(root, **options)
    assert ok
    assert resumed.records[0]["gi"] == 15
    _assert_same_weights(reference, resumed)


def test_storage_options_passed_to_the_trainer_reach_the_store(
    s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    bucket = s3_server.new_bucket("options")
    options = {"endpoint_url": s3_server.endpoint_url, "key": "testing", "secret": "testing"}
    ok, _ = _fit(f"s3://{bucket}", total=2, chkpt_storage_options=options)
    assert ok
    found = hlt.find_last_checkpoint(f"s3://{bucket}/{job.SAVE_NAME}", storage_options=options)
    assert found is not None and found.endswith("resume_epoch_2_iter_2.pth")


def test_a_memory_store_works_like_a_folder(reference: job.ResumeModel) -> None:
    root = f"memory://helios-test-{os.getpid()}-{time.monotonic_ns()}"
    ok, _ = _fit(root, total=4)
    assert ok
    ok, resumed = _fit(root)
    assert ok and resumed.records[0]["gi"] == 9
    _assert_same_weights(reference, resumed)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_the_shared_folder_marker_is_written_read_and_deleted_through_the_folder(
    where: str, request: pytest.FixtureRequest, tmp_path: pathlib.Path
) -> None:
    # The check that every rank of a sharded run sees the checkpoint folder writes a hidden
    # marker through the folder, local or in a store; it is never a checkpoint.
    if where == "s3":
        root: Any = f"{request.getfixturevalue('s3_bucket')}/runs/net"
    else:
        root = tmp_path / "net"
        root.mkdir()
    folder = open_folder(root)
    marker = ".helios-shared-0123abcd"
    assert folder.read_marker(marker) is None
    folder.write_marker(marker, "0123abcd")
    assert open_folder(root).read_marker(marker) == "0123abcd"  # another rank's view
    assert folder.names() == []
    folder.delete_marker(marker)
    assert folder.read_marker(marker) is None
    folder.delete_marker(marker)  # already gone: no error
    for name in ("net_epoch_1_iter_2.pth", "../escape", "checkpoints.json", ".helios-x-zz"):
        with pytest.raises(ValueError, match="not a helios marker name"):
            folder.write_marker(name, "x")


# -- the commit protocol ----------------------------------------------------------------------


def test_an_interrupted_save_is_never_visible_and_the_next_run_cleans_it(
    s3_bucket: str, reference: job.ResumeModel
) -> None:
    root = f"{s3_bucket}/runs"
    ok, _ = _fit(root, total=4)
    assert ok
    folder = open_folder(f"{root}/{job.SAVE_NAME}")
    # What a save killed after its upload and before its commit leaves: a complete,
    # readable checkpoint object and its pending marker, but no commit object.
    complete = folder.cat("resume_epoch_3_iter_4.pth")
    folder.put("resume_epoch_4_iter_5.pth.pending", b"{}")
    folder.put("resume_epoch_4_iter_5.pth", complete)
    folder.put("resume_epoch_4_iter_6.dcp.pending", b"{}")
    folder.put("resume_epoch_4_iter_6.dcp/__0_0.distcp", b"partial")
    assert hlt.find_last_checkpoint(folder.url) == folder.url / "resume_epoch_3_iter_4.pth"
    with pytest.raises(ValueError, match="interrupted save"):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_4_iter_5.pth")

    ok, resumed = _fit(root)
    assert ok and resumed.records[0]["gi"] == 9
    _assert_same_weights(reference, resumed)
    leftovers = [o for o in _objects(folder.url) if "iter_6.dcp" in o or o.endswith(".pending")]
    assert leftovers == []


def test_a_checkpoint_copied_in_without_a_commit_object_is_read_and_kept(
    s3_bucket: str, tmp_path: pathlib.Path
) -> None:
    ok, _ = _fit(tmp_path / "local", total=3)
    assert ok
    folder = open_folder(f"{s3_bucket}/{job.SAVE_NAME}")
    for path in sorted((tmp_path / "local" / job.SAVE_NAME).glob("*.pth")):
        folder.put(path.name, path.read_bytes())  # as `aws s3 sync` would
    ok, resumed = _fit(s3_bucket, total=4)
    assert ok and resumed.records[0]["gi"] == 7
    assert "resume_epoch_2_iter_3.pth" in _objects(folder.url)


# -- hostile objects ----------------------------------------------------------------------------


class Payload:
    """An object whose unpickling would run code (create a marker file)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _commit(name: str, objects: dict[str, int]) -> bytes:
    manifest = {"format": store.COMMIT_FORMAT, "version": 1, "checkpoint": name}
    return json.dumps({**manifest, "objects": objects}).encode()


def test_hostile_objects_in_the_store_are_refused_and_never_run(
    s3_bucket: str, tmp_path: pathlib.Path, reference: job.ResumeModel
) -> None:
    root = f"{s3_bucket}/runs"
    ok, _ = _fit(root, total=4)
    assert ok
    folder = open_folder(f"{root}/{job.SAVE_NAME}")
    marker = tmp_path / "pwned"
    good = folder.cat("resume_epoch_3_iter_4.pth")

    # 1. a malicious pickle, committed as a checkpoint would be
    buffer = io.BytesIO()
    torch.save({"version": "0.1.0", "payload": Payload(marker)}, buffer)
    evil = buffer.getvalue()
    folder.put("resume_epoch_9_iter_20.pth", evil)
    folder.put("resume_epoch_9_iter_20.pth.commit", _commit("resume_epoch_9_iter_20.pth", {
        "resume_epoch_9_iter_20.pth": len(evil)}))  # fmt: skip
    # 2. a fake commit object: names a size the object does not have
    folder.put("resume_epoch_9_iter_19.pth", good[:100])
    folder.put("resume_epoch_9_iter_19.pth.commit", _commit("resume_epoch_9_iter_19.pth", {
        "resume_epoch_9_iter_19.pth": len(good)}))  # fmt: skip
    # 3. a manifest naming an object outside its checkpoint (another run's file)
    folder.put("resume_epoch_9_iter_18.pth", good)
    folder.put("resume_epoch_9_iter_18.pth.commit", _commit("resume_epoch_9_iter_18.pth", {
        "../other/secret.pth": 10, "resume_epoch_9_iter_18.pth": len(good)}))  # fmt: skip
    # 4. a sharded checkpoint whose shard index is a malicious pickle
    index = pickle.dumps(Payload(marker))
    folder.put("resume_epoch_9_iter_17.dcp/.metadata", index)
    folder.put("resume_epoch_9_iter_17.dcp/helios.pth", good)
    folder.put("resume_epoch_9_iter_17.dcp.commit", _commit("resume_epoch_9_iter_17.dcp", {
        "resume_epoch_9_iter_17.dcp/.metadata": len(index),
        "resume_epoch_9_iter_17.dcp/helios.pth": len(good)}))  # fmt: skip
    # 5. a commit object that is not JSON at all
    folder.put("resume_epoch_9_iter_16.pth", good)
    folder.put("resume_epoch_9_iter_16.pth.commit", b"\x80\x04K\x01.")

    with pytest.raises(pickle.UnpicklingError):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_9_iter_20.pth")
    with pytest.raises(ValueError, match="does not match its commit object"):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_9_iter_19.pth")
    with pytest.raises(ValueError, match="outside its checkpoint"):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_9_iter_18.pth")
    with pytest.raises(ShardIndexError, match=r"names posix\.system.*not loaded"):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_9_iter_17.dcp")
    with pytest.raises(ValueError, match="not JSON"):
        hlt.checkpoint.read_checkpoint(folder.url / "resume_epoch_9_iter_16.pth")
    assert not marker.exists()

    # A resume refuses the malicious pickles (not corruption: it stops, naming them), as in
    # a local folder; once they are moved away, it skips the damaged ones.
    with pytest.raises(pickle.UnpicklingError):
        _fit(root, raising=(pickle.UnpicklingError,))
    assert not marker.exists()
    folder.remove("resume_epoch_9_iter_20.pth.commit")
    folder.remove("resume_epoch_9_iter_20.pth")
    with pytest.raises(ShardIndexError, match=r"resume_epoch_9_iter_17\.dcp"):
        _fit(root, raising=(pickle.UnpicklingError,))
    folder.remove("resume_epoch_9_iter_17.dcp.commit")
    folder.remove("resume_epoch_9_iter_17.dcp", recursive=True)
    with pytest.warns(RuntimeWarning, match="could not be read"):
        ok, resumed = _fit(root)
    assert ok and resumed.records[0]["gi"] == 9  # from iteration 4, past every fake
    _assert_same_weights(reference, resumed)
    assert not marker.exists()


def test_an_index_naming_objects_outside_the_folder_is_not_followed(s3_bucket: str) -> None:
    # checkpoints.json comes from the store: its "best" is trusted only as a bare checkpoint
    # name of the folder (the same check as a local folder's index).
    buffer = io.BytesIO()
    torch.save({"version": "0.1.0"}, buffer)
    outside = open_folder(f"{s3_bucket}/other")
    outside.put("resume_epoch_1_iter_1.pth", buffer.getvalue())
    folder = open_folder(f"{s3_bucket}/runs/{job.SAVE_NAME}")
    folder.put("resume_epoch_1_iter_1.pth", buffer.getvalue())
    for hostile in ("../../other/resume_epoch_1_iter_1.pth", ".resume_epoch_1_iter_1.pth", 7):
        folder.put("checkpoints.json", json.dumps({"best": hostile}).encode())
        assert hlt.find_best_checkpoint(folder.url) is None, hostile
    folder.put("checkpoints.json", json.dumps({"best": "resume_epoch_1_iter_1.pth"}).encode())
    assert hlt.find_best_checkpoint(folder.url) == folder.url / "resume_epoch_1_iter_1.pth"


@pytest.mark.parametrize(
    "objects",
    [
        {"x.pth": 1, "x.pth/../y": 1},
        {"/etc/passwd": 1},
        {"x.pth": -1},
        {"x.pth": True},
        {},
    ],
)
def test_commit_objects_name_only_their_own_checkpoint(objects: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        store.parse_commit(_commit("x.pth", objects), "x.pth", "s3://b/x.pth.commit")
    with pytest.raises(ValueError, match="outside"):
        store.parse_commit(
            _commit("x.dcp", {"x.dcp/helios.pth": 1, "x.dcp/../../y": 2, "x.dcp/.metadata": 1}),
            "x.dcp",
            "s3://b/x.dcp.commit",
        )


# -- one run per folder -------------------------------------------------------------------------


def test_a_second_live_run_refuses_naming_the_holder_and_a_dead_runs_lease_is_taken_over(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = open_folder(f"{s3_bucket}/runs/{job.SAVE_NAME}")
    holder = folder.lock()
    holder.acquire()
    try:
        with pytest.raises(
            CheckpointFolderError, match=rf"in use by another run \(pid {os.getpid()}"
        ):
            _fit(f"{s3_bucket}/runs", total=1)
    finally:
        holder.release()
    assert ".helios-run.lock" not in _objects(folder.url)

    # The leftovers of a run killed on this machine: its process is gone.
    dead = {"pid": 2**22 + 12345, **store_lock._machine(), "started": "then",
            "command": "python killed.py", "lease_seconds": 3600}  # fmt: skip
    folder.put(".helios-run.lock", json.dumps(dead).encode())
    ok, _ = _fit(f"{s3_bucket}/runs", total=1)
    assert ok

    # A lease of a run on another machine: refused while it lasts, taken over once stale.
    other = {**dead, "pid": os.getpid(), "host": "elsewhere", "lease_seconds": 2}
    folder.put(".helios-run.lock", json.dumps(other).encode())
    with pytest.raises(CheckpointFolderError, match="host elsewhere"):
        _fit(f"{s3_bucket}/runs", total=1)
    time.sleep(3.5)
    ok, _ = _fit(f"{s3_bucket}/runs", total=2)
    assert ok


# -- an unreachable store -----------------------------------------------------------------------


@pytest.fixture
def relay(s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A relay in front of the server, the environment pointing at the relay."""
    from s3_server import Relay, forget_clients

    relay = Relay(s3_server.port)
    try:
        relay.start()
        for name, value in s3_server.environment(relay.endpoint_url).items():
            monkeypatch.setenv(name, value)
        forget_clients()
        yield relay
    finally:
        relay.close()  # a pending restart included
        forget_clients()


def _fit_cutting_the_store(
    root: str, relay: Any, restart_after: float | None, **options: Any
) -> Any:
    """Fit while the relay is killed during the third upload (restarted after a while)."""
    import threading

    real = torch.save
    saves = 0

    def cut(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        nonlocal saves
        if hasattr(f, "write") and threading.current_thread().name == "helios-checkpoint-writer":
            saves += 1
            if saves == 3:
                relay.kill()
                if restart_after is not None:
                    relay.restart_after(restart_after)
        real(obj, f, *args, **kwargs)

    torch.save = cut
    try:
        return _fit(root, **options)
    finally:
        torch.save = real


def test_a_store_down_during_an_upload_and_back_loses_nothing(
    relay: Any, s3_server: Any, reference: job.ResumeModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "UPLOAD_BACKOFF", 0.2)
    bucket = s3_server.new_bucket("restart")
    ok, model = _fit_cutting_the_store(f"s3://{bucket}", relay, restart_after=1.0)
    assert ok
    _assert_same_weights(reference, model)
    names = [o for o in _objects(f"s3://{bucket}/{job.SAVE_NAME}") if o.endswith(".commit")]
    assert len(names) == TOTAL  # the third save was retried and committed


# s3fs and botocore retry a refused connection themselves, for seconds: once is enough here.
_FEW_RETRIES = {"config_kwargs": {"retries": {"max_attempts": 1}}}


def test_a_store_that_stays_down_fails_the_save_naming_the_url(
    relay: Any, s3_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "UPLOAD_BACKOFF", 0.05)
    monkeypatch.setattr(store, "UPLOAD_TRIES", 3)
    bucket = s3_server.new_bucket("down")
    url = f"s3://{bucket}/{job.SAVE_NAME}/resume_epoch_2_iter_3.pth"
    with pytest.raises(hlt.CheckpointWriteError, match=rf"{url}.*3 tries.*previous checkpoint"):
        _fit_cutting_the_store(
            f"s3://{bucket}", relay, restart_after=None, chkpt_storage_options=_FEW_RETRIES
        )
    relay.start()
    # The previous checkpoint is intact and the newest one.
    found = hlt.find_last_checkpoint(f"s3://{bucket}/{job.SAVE_NAME}")
    assert found is not None and found.name == "resume_epoch_2_iter_2.pth"
    hlt.checkpoint.read_checkpoint(found)


# -- SIGKILL during uploads ---------------------------------------------------------------------


def test_sigkill_at_random_moments_during_uploads_resumes_bit_identical(
    s3_env: Any, tmp_path: pathlib.Path, reference: job.ResumeModel
) -> None:
    # Every upload sleeps in the middle of its data; each job is killed at a random moment
    # (seeded) while training goes on and uploads are in flight, three times in a row, each
    # time from an empty working folder. No partial checkpoint is ever loaded: every resume
    # starts right after a committed checkpoint, and the end is the uninterrupted run.
    import random
    import signal
    import subprocess
    import sys

    bucket = s3_env.new_bucket("sigkill")
    options = json.dumps({"chkpt_root": f"s3://{bucket}/runs", "chkpt_keep_last": 2})
    env = {**os.environ, **s3_env.environment(), "PYTHONUNBUFFERED": "1"}
    draw = random.Random(25)
    for attempt in range(3):
        workdir = tmp_path / f"machine{attempt}"
        workdir.mkdir()
        command = [sys.executable, str(job.__file__), str(workdir), UNIT, str(TOTAL)]
        command += [str(ACCUMULATION), "--save-sleep", "0.2", "--trainer", options]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
        records = workdir / "batches.jsonl"
        deadline = time.monotonic() + 120
        while not records.exists() and process.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(draw.uniform(0.05, 0.6))
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
        newest = hlt.find_last_checkpoint(f"s3://{bucket}/runs/{job.SAVE_NAME}")
        if newest is not None:
            hlt.checkpoint.read_checkpoint(newest)  # committed means complete
    ok, model = _fit(f"s3://{bucket}/runs", chkpt_keep_last=2)
    assert ok
    _assert_same_weights(reference, model)
