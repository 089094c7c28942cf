"""Kill and resume: a run killed with SIGKILL (also in the middle of writing a checkpoint) and resumed with
--resume ends with weights bit-identical to an uninterrupted run (tiny shapes-world Mask2Former, CPU)."""
import os
import signal

import pytest

from reliability_testing import final_weights, finish_driver, max_abs_difference, run_driver, start_driver

KILLED = -signal.SIGKILL
MAX_ITER = 10
PERIOD = ["SOLVER.CHECKPOINT_PERIOD", 3]  # checkpoints after iterations 2, 5 and 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from test_training_e2e import register_data

    root = tmp_path_factory.mktemp("data")
    register_data(root)  # generated here once, so that two drivers can run at the same time
    return root


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bit_identical(data, tmp_path):
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    # the uninterrupted run goes on beside the killed one (each driver uses one thread)
    uninterrupted = start_driver(data, ref, MAX_ITER, opts=PERIOD)

    run_driver(data, run, MAX_ITER, "--kill-at", 4, opts=PERIOD, expect_rc=KILLED)  # mid-interval: resumes from 2
    # killed half-way through writing model_0000005.pth: the half file stays a temporary, 2 stays the last
    run_driver(data, run, MAX_ITER, "--resume", "--kill-in-save", 5, opts=PERIOD, expect_rc=KILLED)
    assert (run / "last_checkpoint").read_text() == "model_0000002.pth"
    assert not (run / "model_0000005.pth").exists()
    assert any(name.startswith(".model_0000005.pth.tmp-") for name in os.listdir(run))
    # two data-loader workers now (the uninterrupted run had none): the data must not depend on them
    out = run_driver(data, run, MAX_ITER, "--resume", "--kill-at", 7, opts=PERIOD + ["DATALOADER.NUM_WORKERS", 2],
                     expect_rc=KILLED)
    assert "left by a save that did not finish" in out
    assert (run / "last_checkpoint").read_text() == "model_0000005.pth"
    run_driver(data, run, MAX_ITER, "--resume", opts=PERIOD)  # from model_0000005.pth to the end

    finish_driver(uninterrupted)
    assert max_abs_difference(final_weights(ref), final_weights(run)) == 0.0
