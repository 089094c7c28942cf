"""Multi-process launcher that also works without GPUs.

detectron2 0.6's ``launch`` asserts that CUDA is available and always uses NCCL. This one has the same
signature plus ``backend``: "nccl" (one GPU per process) or "gloo" (CPU processes), by default NCCL when
CUDA is available. ``--num-gpus N`` on a CPU-only machine thus starts N CPU processes.
"""
import logging
import os
import socket
from datetime import timedelta
from typing import Callable, Optional, Tuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from detectron2.utils import comm

from ..compat import create_local_process_group

__all__ = ["DEFAULT_TIMEOUT", "launch"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def _find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(
    main_func: Callable,
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Tuple = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
    backend: Optional[str] = None,
) -> None:
    """
    Run ``main_func(*args)`` in ``num_gpus_per_machine`` processes on each of ``num_machines``
    machines (call it on every machine), or directly when the world size is 1.

    Args:
        num_gpus_per_machine: processes per machine (one per GPU with NCCL).
        dist_url: e.g. "tcp://127.0.0.1:50000"; "auto" picks a free local port (one machine only).
        backend: "nccl" or "gloo"; ``None`` means NCCL if CUDA is available, else gloo.
    """
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise ValueError(f"--num-gpus ({num_gpus_per_machine}) and --num-machines ({num_machines}) must be >= 1")
    world_size = num_machines * num_gpus_per_machine
    if world_size == 1:
        main_func(*args)
        return

    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    backend = backend.lower()
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"launch: backend must be 'nccl' or 'gloo', got '{backend}'")
    if backend == "nccl" and torch.cuda.device_count() < num_gpus_per_machine:
        raise ValueError(
            f"--num-gpus {num_gpus_per_machine} needs that many GPUs for NCCL, but "
            f"{torch.cuda.device_count()} are visible (use MODEL.DEVICE cpu for CPU processes)"
        )
    if dist_url is None or dist_url == "auto":
        if num_machines > 1:
            raise ValueError("--dist-url must name the address of machine 0 in a multi-machine job")
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logging.getLogger(__name__).warning(
            "file:// is not a reliable init_method in multi-machine jobs; prefer tcp://"
        )

    mp.start_processes(
        _worker,
        nprocs=num_gpus_per_machine,
        args=(main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args, timeout, backend),
        daemon=False,
        start_method="spawn",
    )


def _worker(local_rank, main_func, world_size, num_per_machine, machine_rank, dist_url, args, timeout, backend):
    global_rank = machine_rank * num_per_machine + local_rank
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    elif "OMP_NUM_THREADS" not in os.environ:
        # share the cores between the processes of this machine
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_per_machine))
    try:
        dist.init_process_group(
            backend=backend, init_method=dist_url, world_size=world_size, rank=global_rank, timeout=timeout
        )
    except Exception:
        logging.getLogger(__name__).error(f"Process group URL: {dist_url}")
        raise
    create_local_process_group(num_per_machine)
    comm.synchronize()
    main_func(*args)
    comm.synchronize()
    dist.destroy_process_group()
