"""Failing ranks end the whole job (two gloo processes on the CPU): a rank that raises, a rank killed by a
signal, and a rank whose data loader stalls (DATALOADER.TIMEOUT) make the job exit non-zero within a bounded
time, with that rank's error; the other rank, blocked in a collective, is stopped by the launcher."""
import os
import signal
import time

import pytest
import torch.multiprocessing as mp
from detectron2.data import DatasetMapper

import train_net
from mask2former.engine import launch
from test_trainer import TinyTrainer, _args, _opts, register_tiny_datasets, tiny_data  # noqa: F401 (fixture)

BOUND_S = 90  # generous: spawning two processes that import torch and detectron2 takes most of it


def _wait_in_barrier_unless(rank_action):
    from detectron2.utils import comm

    if comm.get_rank() == 1:
        rank_action()
    comm.synchronize()  # rank 0 waits here for a rank that never comes
    time.sleep(600)


def _raise():
    raise ValueError("rank 1 fails on purpose")


def _kill():
    os.kill(os.getpid(), signal.SIGKILL)


def raise_on_rank_1():
    _wait_in_barrier_unless(_raise)


def kill_rank_1():
    _wait_in_barrier_unless(_kill)


@pytest.mark.slow
def test_a_rank_that_raises_ends_the_job_with_its_traceback():
    # launch() raises in the parent, so train_net.py exits non-zero and Python prints this message
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException) as e:
        launch(raise_on_rank_1, 2, dist_url="auto", backend="gloo")
    message = str(e.value)
    assert "Process 1 terminated with the following error" in message
    assert "Traceback" in message and "ValueError: rank 1 fails on purpose" in message, message
    assert time.monotonic() - start < BOUND_S


@pytest.mark.slow
def test_a_rank_killed_by_a_signal_ends_the_job():
    start = time.monotonic()
    with pytest.raises(mp.ProcessExitedException, match="process 1 terminated with signal SIGKILL"):
        launch(kill_rank_1, 2, dist_url="auto", backend="gloo")
    assert time.monotonic() - start < BOUND_S


class _StallingMapper(DatasetMapper):
    """detectron2's mapper; rank 1 blocks forever on its 5th item (one image per rank and batch: iteration 4)."""

    calls = 0

    def __call__(self, dataset_dict):
        from detectron2.utils import comm

        type(self).calls += 1
        if comm.get_rank() == 1 and type(self).calls == 5:
            time.sleep(3600)
        return super().__call__(dataset_dict)


class _StallingTrainer(TinyTrainer):
    @classmethod
    def build_train_mapper(cls, cfg):
        return _StallingMapper(cfg, is_train=True)


def _stalling_worker(args, data_root):
    register_tiny_datasets(data_root)
    trainer = _StallingTrainer(train_net.setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()


@pytest.mark.slow
def test_a_stalled_data_loader_is_reported_by_the_timeout(tiny_data, tmp_path):  # noqa: F811
    opts = _opts(tmp_path, **{"SOLVER.MAX_ITER": 6, "TEST.EVAL_PERIOD": 0, "DATASETS.TEST": "()",
                              "SOLVER.CHECKPOINT_PERIOD": 100, "DATALOADER.TIMEOUT": 3})
    args = _args("--num-gpus", "2", opts=opts)
    start = time.monotonic()
    with pytest.raises(mp.ProcessRaisedException) as e:
        launch(_stalling_worker, 2, dist_url="auto", args=(args, tiny_data), backend="gloo")
    message = str(e.value)
    assert "Process 1 terminated" in message and "DataLoaderStallError" in message
    assert "rank 1 produced no batch for 3 s at iteration 4 (DATALOADER.TIMEOUT)" in message
    assert time.monotonic() - start < BOUND_S
