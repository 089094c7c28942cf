"""Atomic checkpoints, resuming past a damaged checkpoint, and a full disk (ENOSPC) during training."""
import errno
import json
import logging
import os
import subprocess
import uuid

import pytest
import torch
from torch import nn

import train_net
from mask2former.engine import checkpoint as checkpoint_module
from mask2former.engine.checkpoint import CheckpointUnreadableError, MaskFormerCheckpointer
from mask2former.utils.disk import DiskFullError
from test_trainer import TinyTrainer, _args, _opts, register_tiny_datasets, tiny_data  # noqa: F401 (fixture)


class _Counter:
    """A checkpointable whose state is one number."""

    def __init__(self, value=0):
        self.value = value

    def state_dict(self):
        return {"value": self.value}

    def load_state_dict(self, state):
        self.value = state["value"]


def _checkpointer(folder, value=0):
    model = nn.Linear(3, 2)
    counter = _Counter(value)
    return MaskFormerCheckpointer(model, str(folder), counter=counter), model, counter


def _save_three(folder):
    checkpointer, model, counter = _checkpointer(folder)
    for it in (4, 9, 14):
        counter.value = it
        checkpointer.save(f"model_{it:07d}")
    return checkpointer


def test_save_is_atomic_and_leaves_no_temporary(tmp_path):
    _save_three(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth", "model_0000009.pth",
                                            "model_0000014.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000014.pth"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "missing"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, caplog, damage):
    _save_three(tmp_path)
    newest = tmp_path / "model_0000014.pth"
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:
        newest.unlink()
    checkpointer, _, counter = _checkpointer(tmp_path, value=-1)
    with caplog.at_level(logging.WARNING):
        checkpointer.resume_or_load("", resume=True)
    assert counter.value == 9  # model_0000009.pth
    assert "model_0000014.pth" in caplog.text and "newest intact checkpoint" in caplog.text


def test_resume_stops_when_no_checkpoint_is_intact(tmp_path):
    _save_three(tmp_path)
    for name in ("model_0000004.pth", "model_0000009.pth", "model_0000014.pth"):
        (tmp_path / name).write_bytes(b"not a checkpoint")
    checkpointer, _, _ = _checkpointer(tmp_path)
    with pytest.raises(CheckpointUnreadableError) as e:
        checkpointer.resume_or_load("", resume=True)
    assert all(name in str(e.value) for name in ("model_0000004.pth", "model_0000009.pth", "model_0000014.pth"))


def _enospc_after(nbytes):
    """A torch.save that writes ``nbytes`` bytes, then fails as a full disk does."""

    def save(obj, f, *args, **kwargs):
        f.write(b"x" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return save


def test_save_on_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    checkpointer = _save_three(tmp_path)
    before = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    monkeypatch.setattr(checkpoint_module.torch, "save", _enospc_after(100))
    with pytest.raises(DiskFullError) as e:
        checkpointer.save("model_0000019")
    message = str(e.value)
    assert "model_0000019.pth" in message and " free" in message and "model_0000014.pth' is intact" in message
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == before  # nothing else touched


def _train_tiny(out, monkeypatch, **overrides):
    monkeypatch.setattr(train_net, "Trainer", TinyTrainer)
    opts = _opts(out, **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0, "DATASETS.TEST": "()", **overrides})
    return train_net.main(_args(opts=opts))


def test_training_on_a_full_disk_stops_naming_the_checkpoint(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    real_save = torch.save
    calls = []

    def save(obj, f, *args, **kwargs):
        calls.append(f.name)
        if len(calls) == 2:  # the second checkpoint (iteration 3) finds the disk full
            return _enospc_after(10)(obj, f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    with pytest.raises(DiskFullError) as e:
        _train_tiny(tmp_path, monkeypatch)
    assert "model_0000003.pth" in str(e.value) and "model_0000001.pth' is intact" in str(e.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    torch.load(tmp_path / "model_0000001.pth", weights_only=False)  # loadable
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


class _FullFile:
    """A file object whose writes fail with ENOSPC once ``fail`` is set."""

    def __init__(self, f):
        self._f, self.fail = f, False

    def write(self, text):
        if self.fail:
            self._f.write(text[: len(text) // 2])  # a partial write, as a real full disk gives
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(text)

    def __getattr__(self, name):
        return getattr(self._f, name)


def test_metrics_on_a_full_disk_stop_naming_metrics_json_and_keep_its_lines(tiny_data, tmp_path,  # noqa: F811
                                                                            monkeypatch):
    from detectron2.engine import hooks

    from mask2former.engine.trainer import SafeJSONWriter

    class FullDiskTrainer(TinyTrainer):
        def build_hooks(self):
            ret = super().build_hooks()
            writer = next(h for h in ret if isinstance(h, hooks.PeriodicWriter))
            json_writer = next(w for w in writer._writers if isinstance(w, SafeJSONWriter))
            json_writer._file_handle = full = _FullFile(json_writer._file_handle)
            original = writer.after_step

            def after_step():  # the first write (iteration 0 is not written; 19 would be): force one at 2, 4
                if self.iter in (2, 4):
                    full.fail = self.iter == 4
                    for w in writer._writers:
                        w.write()
                original()

            writer.after_step = after_step
            return ret

    monkeypatch.setattr(train_net, "Trainer", FullDiskTrainer)
    opts = _opts(tmp_path, **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0, "DATASETS.TEST": "()"})
    with pytest.raises(DiskFullError) as e:
        train_net.main(_args(opts=opts))
    assert "metrics.json" in str(e.value) and " free" in str(e.value)
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in lines] == [2]  # the partial line was taken back
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000003.pth"


def _mount_tmpfs(folder, size_kib):
    folder.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(folder)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e}); the monkeypatched ENOSPC tests above cover the code path")


def test_real_full_tmpfs_stops_training_and_keeps_the_checkpoint(tiny_data, tmp_path, monkeypatch):  # noqa: F811
    """On a real (small) tmpfs: a filler file leaves too little space for the second checkpoint."""
    disk = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    _mount_tmpfs(disk, 2048)
    try:
        class FillAfterFirstCheckpoint(TinyTrainer):
            def build_hooks(self):
                from detectron2.engine import HookBase

                class Fill(HookBase):
                    def after_step(hook):
                        if self.iter == 1:
                            stat = os.statvfs(disk)
                            with open(disk / "filler", "wb") as f:
                                f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 4096))

                return super().build_hooks() + [Fill()]

        monkeypatch.setattr(train_net, "Trainer", FillAfterFirstCheckpoint)
        opts = _opts(disk / "out", **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0, "DATASETS.TEST": "()"})
        with pytest.raises(DiskFullError) as e:
            train_net.main(_args(opts=opts))
        assert "model_0000003.pth" in str(e.value) and " free" in str(e.value)
        assert (disk / "out" / "last_checkpoint").read_text() == "model_0000001.pth"
        torch.load(disk / "out" / "model_0000001.pth", weights_only=False)
    finally:
        _close_log_files_under(disk)
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _close_log_files_under(folder):
    """Close the log.txt streams that train_net's logger opened on the full disk; else their flush at interpreter
    exit fails again and prints the error after the test run."""
    import logging

    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if str(getattr(stream, "name", "")).startswith(str(folder)):
                logger.removeHandler(handler)
                try:
                    stream.close()
                except OSError:
                    pass  # the buffered lines cannot be written: the disk is full
