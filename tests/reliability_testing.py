"""Helpers of the reliability tests: run tests/fault_driver.py in a child process and read its weights."""
import os
import subprocess
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_driver(data, output, max_iter, *flags, opts=(), expect_rc=0, timeout=120):
    """Run the fault driver; returns its combined output. Asserts its exit status."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(HERE, "fault_driver.py"), "--data", str(data), "--output", str(output),
           "--max-iter", str(max_iter), *map(str, flags), *map(str, opts)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                          timeout=timeout)
    assert proc.returncode == expect_rc, f"exit status {proc.returncode} (expected {expect_rc}):\n{proc.stdout[-4000:]}"
    return proc.stdout


def final_weights(output):
    return torch.load(os.path.join(output, "model_final.pth"), map_location="cpu", weights_only=False)["model"]


def max_abs_difference(a, b):
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0 for k in a)
