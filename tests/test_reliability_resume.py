"""Kill and resume: a run killed with SIGKILL (also in the middle of writing a checkpoint) and resumed with
--resume ends with weights bit-identical to an uninterrupted run (tiny shapes-world Mask2Former, CPU)."""
import os
import signal

import pytest

from reliability_testing import final_weights, max_abs_difference, run_driver

KILLED = -signal.SIGKILL
MAX_ITER = 20  # checkpoints every 5 iterations (fault_driver.py)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_is_bit_identical(data, tmp_path):
    ref, run = tmp_path / "uninterrupted", tmp_path / "killed"
    run_driver(data, ref, MAX_ITER)

    run_driver(data, run, MAX_ITER, "--kill-at", 7, expect_rc=KILLED)  # mid-interval: resumes from iteration 4
    # killed half-way through writing model_0000014.pth: the half file stays a temporary, 9 stays the last
    run_driver(data, run, MAX_ITER, "--resume", "--kill-in-save", 14, expect_rc=KILLED)
    assert (run / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (run / "model_0000014.pth").exists()
    assert any(name.startswith(".model_0000014.pth.tmp-") for name in os.listdir(run))
    # two data-loader workers now (the uninterrupted run had none): the data must not depend on them
    out = run_driver(data, run, MAX_ITER, "--resume", "--kill-at", 17, opts=["DATALOADER.NUM_WORKERS", 2],
                     expect_rc=KILLED)
    assert "left by a save that did not finish" in out
    run_driver(data, run, MAX_ITER, "--resume")  # from model_0000014.pth to the end

    assert max_abs_difference(final_weights(ref), final_weights(run)) == 0.0
