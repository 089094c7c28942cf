"""keep_freed_cpu_memory: with glibc, large CPU tensors reuse freed memory instead of being page-faulted in
anew; MASK2FORMER_CPU_ALLOC=system leaves glibc's defaults. Each case runs in its own process (the setting is
process-wide)."""
import json
import os
import platform
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = platform.libc_ver()[0] == "glibc"

PROBE = """
import importlib.util, json, resource, sys, torch
# the module alone (importing the mask2former package would also import detectron2: seconds per process)
spec = importlib.util.spec_from_file_location("cpu_memory", "mask2former/utils/cpu_memory.py")
cpu_memory = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_memory)
mode = cpu_memory.keep_freed_cpu_memory()
faults = []
for i in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB: above glibc's largest mmap threshold
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"mode": mode, "faults": sum(faults[12:])}))  # the heap settles within ~8
"""


def _probe(**env):
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, PYTHONPATH=REPO, **env))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_large_tensors_reuse_freed_memory():
    kept, system = _probe(), _probe(MASK2FORMER_CPU_ALLOC="system")
    assert system["mode"] == "system"
    if not GLIBC:
        assert kept["mode"] == "unavailable"
        return
    assert kept["mode"] == "keep"
    pages = 4 * 16 * 2**20 * 4 // os.sysconf("SC_PAGE_SIZE")  # what 4 fresh 64 MiB tensors touch
    assert system["faults"] > pages // 2  # each new tensor faulted in again
    assert kept["faults"] < pages // 50  # the freed block served the next tensor


def test_an_unknown_setting_is_refused_by_name(monkeypatch):
    from mask2former.utils import cpu_memory

    monkeypatch.setattr(cpu_memory, "_applied", None)
    monkeypatch.setenv("MASK2FORMER_CPU_ALLOC", "jemalloc")
    with pytest.raises(ValueError, match="MASK2FORMER_CPU_ALLOC must be 'keep'.*'jemalloc'"):
        cpu_memory.keep_freed_cpu_memory()
