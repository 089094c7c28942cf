"""Helpers of the reliability tests: run tests/fault_driver.py in a child process and read its weights."""
import os
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def start_driver(data, output, max_iter, *flags, opts=()):
    """Start the fault driver in a child process (one thread) and return it; see finish_driver. Its output goes
    to a temporary file, so that a driver left running beside others never blocks on a full pipe."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(HERE, "fault_driver.py"), "--data", str(data), "--output", str(output),
           "--max-iter", str(max_iter), *map(str, flags), *map(str, opts)]
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env)
    proc.log = log
    return proc


def finish_driver(proc, expect_rc=0, timeout=120):
    """Wait for a driver started by start_driver; returns its combined output. Asserts its exit status."""
    try:
        proc.wait(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        timed_out = True
    proc.log.seek(0)
    out = proc.log.read()
    proc.log.close()
    assert not timed_out, f"the fault driver ran past {timeout} s:\n{out[-4000:]}"
    assert proc.returncode == expect_rc, f"exit status {proc.returncode} (expected {expect_rc}):\n{out[-4000:]}"
    return out


def run_driver(data, output, max_iter, *flags, opts=(), expect_rc=0, timeout=120):
    """Run the fault driver to its end; returns its combined output. Asserts its exit status."""
    return finish_driver(start_driver(data, output, max_iter, *flags, opts=opts), expect_rc, timeout)


def final_weights(output):
    return torch.load(os.path.join(output, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def max_abs_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)
