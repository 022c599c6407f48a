"""Multi-process training: N DistributedDataParallel ranks train one model, rank 0's result is the job's.

The calling process (a worker holding a job's lease) stays out of the process group: it hosts the rendezvous
store on a free loopback port (a TCPStore bound to port 0, so no port race), spawns the ranks with
torch.multiprocessing ("spawn": no forked threads or database connections), relays rank 0's progress reports
to the caller's callback and waits. Each rank joins the group (gloo on the CPU, NCCL on CUDA, one GPU per
rank), trains on its share of the windows (Trainer.epoch shards every epoch's shuffled order by rank; DDP
all-reduces the gradients of every step), and rank 0 alone validates, chooses the best epoch (broadcast to
the others) and hands its FitResult back through a file. The caller writes the artifact and records the
version, exactly as after a single-process fit.

Quality equals one process: the per-rank batch is the configured batch divided by the ranks (same effective
batch, the same number of optimiser steps per epoch, the same learning-rate schedule) and every epoch still
covers all the windows. Threads: each rank gets cores // nproc torch threads, so the ranks do not
oversubscribe the CPUs.

Failure is bounded: init_process_group and every collective run under `timeout_s`; a rank that raises exits
non-zero, the peers' next collective fails (gloo sees the closed connection at once, a hung peer after
`timeout_s`), the remaining ranks are terminated and the first rank's error is raised here. An exception in the
caller's progress callback (the lease was lost, the worker is stopping) terminates the ranks and propagates.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue as queue_mod
import signal
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.ml.config import TrainConfig
from app.ml.train import ProgressInfo, WarmStartError

HOST = "127.0.0.1"
DEFAULT_TIMEOUT_S = 300.0
POLL_S = 0.2


class DistributedTrainingError(RuntimeError):
    """A rank failed (its error is in the message) or the ranks could not be started."""


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def backend_for(config: TrainConfig) -> str:
    """NCCL when the ranks train on CUDA (as resolve_device would choose), gloo on the CPU."""
    cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    return "nccl" if cuda else "gloo"


def rank_config(config: TrainConfig, nproc: int, cores: int | None = None) -> TrainConfig:
    """One rank's config: batch and batch positions divided by the ranks (the effective batch stays the
    configured one), and cores // nproc torch threads (the configured threads, else the CPUs available)."""
    if nproc < 1:
        raise ValueError(f"nproc: {nproc} must be >= 1")
    total = config.threads if config.threads > 0 else (cores or available_cores())
    return replace(
        config,
        batch_size=max(1, config.batch_size // nproc),
        batch_positions=max(1, config.batch_positions // nproc),
        threads=max(1, total // nproc),
    )


@dataclass(frozen=True)
class RankJob:
    """What every rank needs to join the group and where rank 0 leaves its result."""

    port: int
    world: int
    backend: str
    timeout_s: float
    result_path: str
    parent_pid: int
    hook: Callable[[int], None] | None = None  # called first in every rank (tests inject faults with it)


def _rank_main(
    rank: int,
    job: RankJob,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    config: TrainConfig,
    reports: Any,
) -> None:
    """One rank: join the group, run target(config, progress, *args); rank 0 saves what it returns."""
    # Ctrl-C reaches the whole process group: the parent decides (it stops the ranks itself), not each rank.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent(job.parent_pid)
    os.environ.update(
        {
            "MASTER_ADDR": HOST,
            "MASTER_PORT": str(job.port),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(job.world),
        }
    )
    try:
        if job.hook is not None:
            job.hook(rank)
        if job.backend == "nccl":
            torch.cuda.set_device(rank)
        timeout = timedelta(seconds=job.timeout_s)
        store = dist.TCPStore(HOST, job.port, is_master=False, timeout=timeout)
        dist.init_process_group(job.backend, store=store, rank=rank, world_size=job.world, timeout=timeout)
        try:
            progress = reports.put if rank == 0 else None
            result = target(config, progress, *args)
            if rank == 0:
                partial = job.result_path + ".part"
                torch.save(result, partial)
                os.replace(partial, job.result_path)
        finally:
            dist.destroy_process_group()
    except BaseException as exc:
        # The root cause first: a peer's failure then shows up here as a collective error, later.
        # Kept short: a message under the pipe's atomic write size cannot be cut by a SIGTERM mid-write.
        trace = traceback.format_exc()[-2000:]
        reports.put(("error", rank, type(exc).__name__, str(exc)[:1000], trace))
        raise
    # gloo's background threads can abort a normally ending interpreter ("terminate called without an active
    # exception"); the result is on disk, so leave without running C++ static destructors.
    os._exit(0)


def _watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """Leave at once when the process that spawned this rank is gone (killed): no orphaned training."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="reco-ddp-parent-watch", daemon=True).start()


def _stop(context: Any) -> None:
    """Terminate the ranks still running (SIGTERM, then SIGKILL after 5 s) and reap them."""
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    deadline = time.monotonic() + 5.0
    for process in context.processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
            process.join()


def _raise_rank_error(errors: list[tuple[Any, ...]], failure: Exception, world: int) -> None:
    if not errors:
        raise DistributedTrainingError(f"DDP training ({world} processes) failed: {failure}") from None
    _, rank, kind, message, trace = errors[0]  # the first reported: the root cause
    if kind == "WarmStartError":
        raise WarmStartError(message) from None
    if kind == "ValueError":  # bad data or config: the same message as a single-process fit
        raise ValueError(message) from None
    raise DistributedTrainingError(
        f"DDP rank {rank} of {world} failed: {kind}: {message}\n{trace}".rstrip()
    ) from None


def run_ranks(
    nproc: int,
    target: Callable[..., Any],
    args: tuple[Any, ...],
    config: TrainConfig,
    progress: Callable[[ProgressInfo], None] | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    hook: Callable[[int], None] | None = None,
) -> Any:
    """Run target(rank_config, progress_or_None, *args) on `nproc` DDP ranks; return what rank 0 returned.

    `target` and `args` are pickled to the ranks (module-level functions and plain data); `progress` runs
    here, on rank 0's reports. Raises the first failing rank's error (ValueError and WarmStartError keep
    their type and message, others become DistributedTrainingError with the rank's traceback).
    """
    if nproc < 2:
        raise ValueError(f"nproc: {nproc}; run_ranks needs at least 2 processes (1 trains in-process)")
    backend = backend_for(config)
    if backend == "nccl" and torch.cuda.device_count() < nproc:
        raise ValueError(
            f"nproc: {nproc} ranks on CUDA need {nproc} GPUs; torch sees {torch.cuda.device_count()}"
        )
    per_rank = rank_config(config, nproc)
    ctx = mp.get_context("spawn")
    reports = ctx.SimpleQueue()  # no feeder thread: what a rank put is in the pipe before it exits
    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(HOST, 0, nproc, is_master=True, wait_for_workers=False, timeout=timeout)
    errors: list[tuple[Any, ...]] = []

    def drain() -> None:
        while not reports.empty():
            item = reports.get()
            if isinstance(item, tuple) and item and item[0] == "error":
                errors.append(item)
            elif progress is not None:
                progress(item)

    with tempfile.TemporaryDirectory(prefix="reco-ddp-") as tmp:
        job = RankJob(store.port, nproc, backend, timeout_s, str(Path(tmp) / "result.pt"), os.getpid(), hook)
        context = mp.start_processes(
            _rank_main,
            args=(job, target, args, per_rank, reports),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        try:
            while True:
                drain()
                if context.join(timeout=POLL_S, grace_period=2.0):
                    break
            drain()
        except (
            mp.ProcessRaisedException,
            mp.ProcessExitedException,
        ) as exc:  # a rank failed; join() has terminated the others
            _stop(context)
            with contextlib.suppress(EOFError, OSError, pickle.UnpicklingError, queue_mod.Empty):
                drain()  # the ranks' error reports
            _raise_rank_error(errors, exc, nproc)
        except BaseException:  # the caller's progress callback raised (lease lost, stopping): end the ranks
            _stop(context)
            raise
        finally:
            del store
        if not os.path.exists(job.result_path):
            raise DistributedTrainingError(f"DDP training ({nproc} processes): rank 0 left no result")
        return torch.load(job.result_path, weights_only=False)
