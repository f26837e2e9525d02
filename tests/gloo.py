"""Real DDP on CPU for tests: `world` processes in one gloo group run `fn(rank, world, *args)`."""

import faulthandler
import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def run_ranks(fn, world: int, *args) -> None:
    mp.spawn(_rank_main, args=(fn, world, free_port(), *args), nprocs=world)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, fn, world: int, port: int, *args) -> None:
    faulthandler.enable()  # a native abort still prints where Python was
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()  # neither rank tears the group down while the other still uses it
    finally:
        dist.destroy_process_group()
    # Every check ran and its result is written. Skip interpreter shutdown: gloo's threads
    # can abort a process there ("terminate called without an active exception", about one
    # run in twenty on a loaded 2-core box), which would fail a test that passed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
