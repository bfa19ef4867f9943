"""Batch mode on Ray (`demo.py --video FOLDER --ray [ADDRESS]`): the clips of a folder spread over the cores and
machines of a Ray cluster.

Why a pool of actors: loading the networks costs seconds per process (torch, Ultralytics, the lifters), a clip of a
data set often less. Each worker actor calls `load_models` once and then `process_clip` for one clip after another;
the driver hands the next clip to whichever worker finishes first. Every result is the serial run's: a worker runs
the same `process_clip` with the same settings and writes the outputs itself, straight into `--out`, atomically as
always. On a cluster the clips and `--out` must therefore be on storage every node mounts at the same path (NFS etc.).

Faults: a clip that fails (a damaged file, nobody in it) is one line and the others go on; a worker process that dies
is restarted by Ray and its clip retried (`RayConfig.max_restarts`), then replaced by a fresh worker; Ctrl-C
interrupts the running clips inside their workers, so their temporary files are removed as in a serial run, and a
re-run skips the completed clips. `OUT/batch.json` records every clip's status, frames, seconds and worker.

Ray is an optional extra (`pip install -e .[ray]`): it is imported only here, only when `--ray` is given.
"""
from __future__ import annotations

import collections
import ctypes
import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pipeline.app.inputs import UserError
from pipeline.app.models import Models, load_models
from pipeline.app.outputs import save_json
from pipeline.app.process import ultralytics_environment
from pipeline.app.runner import RunConfig, one_line, plan_clip, process_clip

log = logging.getLogger(__name__)

BATCH_FILE = "batch.json"
# Seconds the workers get to stop their clips cleanly after Ctrl-C before they are killed.
CANCEL_GRACE_SECONDS = 30.0


@dataclass
class RayConfig:
    """Where the batch runs and what each worker asks the cluster for."""

    address: str | None = None  # None or "local": a new Ray instance on this machine; "auto", "HOST:PORT" or
    #                             "ray://HOST:PORT": an existing cluster
    cpus_per_worker: float = 1.0  # one core per clip: on CPUs, N single-threaded clips beat one N-threaded clip
    gpus_per_worker: float = 0.25  # asked for when the cluster has GPUs and the device may be CUDA: four workers
    #                                share a GPU (not measured: raise it if the workers run out of GPU memory)
    memory_per_worker: int = 1536 * 2**20  # bytes; the whole pipeline peaked at 1023 MB on the 1768x994 sample
    workers: int | None = None  # None: as many as the cluster's resources fit, at most one per clip
    max_restarts: int = 2  # a dead worker is restarted (and its clip retried) this many times, then replaced


@dataclass
class ClipResult:
    """One clip's outcome, as the driver prints it and batch.json records it."""

    clip: Path
    status: str  # "done", "skipped", "failed", "cancelled" or "not started"
    message: str  # the summary line, or what went wrong
    frames: int | None = None  # frames processed (recorded in run.json); None when failed
    seconds: float | None = None  # wall time in the worker
    worker: dict | None = None  # {"node", "hostname", "worker_pid", "address"}

    def record(self) -> dict:
        return {"clip": self.clip.name, "path": str(self.clip), "status": self.status, "frames": self.frames,
                "seconds": self.seconds, "worker": self.worker, "message": self.message}


class ClipWorker:
    """A Ray actor that loads the networks once and then processes one clip per `run` call.

    It runs with two threads (`max_concurrency=2`) so that `interrupt` can reach a clip while `run` is busy with it.
    """

    def __init__(self, config: RunConfig, describe_error: Callable[[BaseException], str]):
        import ray
        import ultralytics  # noqa: F401  (importing it sets its logger to INFO)

        from pipeline.app.process import configure_process

        configure_process()
        self.config = config
        self.describe_error = describe_error
        self.models = load_models(config.lifting, config.pose2d)
        self.location = {"node": ray.util.get_node_ip_address(), "hostname": socket.gethostname(),
                         "worker_pid": os.getpid(), "address": ray.get_runtime_context().gcs_address}
        self._lock = threading.Lock()
        self._busy_thread: int | None = None

    def where(self) -> dict:
        """Where this worker runs; the driver waits for it to know that the worker is up."""
        return self.location

    def run(self, clip: Path) -> ClipResult:
        """Process one clip (or skip it when its outputs are complete); never raises for a bad clip."""
        t0 = time.perf_counter()
        with self._lock:
            self._busy_thread = threading.get_ident()
        try:
            try:
                status, message, frames = self._process(clip)
            finally:
                with self._lock:
                    self._busy_thread = None
        except KeyboardInterrupt:  # from `interrupt`: the stages' atomic writes have removed their temporary files
            status, message, frames = "cancelled", "interrupted", None
        except Exception as exc:
            status, message, frames = "failed", self.describe_error(exc), None
        return ClipResult(clip, status, message, frames, round(time.perf_counter() - t0, 3), self.location)

    def _process(self, clip: Path) -> tuple[str, str, int | None]:
        job = plan_clip(clip, self.config, self.models)
        if not self.config.force and job.out.complete(job.fingerprint):
            return "skipped", f"{clip.name}: outputs in {job.out.folder} are complete, skipped (--force redoes " \
                "them)", recorded_frames(job.out.run_json)
        summary = process_clip(clip, self.config, self.models, ray_worker=self.location)
        return "done", summary, recorded_frames(job.out.run_json)

    def interrupt(self) -> bool:
        """Raise KeyboardInterrupt inside the running clip (Ray does not interrupt a running actor method); the clip
        stops at its next Python instruction, cleaning up as after Ctrl-C in a serial run. False when idle."""
        with self._lock:
            if self._busy_thread is None:
                return False
            return ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._busy_thread),
                                                              ctypes.py_object(KeyboardInterrupt)) == 1


def recorded_frames(run_json: Path) -> int | None:
    """The frame count a clip's run.json records."""
    try:
        return int(json.loads(run_json.read_text(encoding="utf-8"))["video"]["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def import_ray():
    """Ray, or a one-line error that says how to install it."""
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray, an optional extra: pip install -e .[ray]") from None
    return ray


def process_clips_on_ray(clips: list[Path], config: RunConfig, ray_config: RayConfig,
                         describe_error: Callable[[BaseException], str] | None = None) -> int:
    """Process every clip on a Ray pool of `ClipWorker`s; returns the exit code (0, or 1 when a clip failed; 2 when
    the only clip failed, as in a serial run). Writes OUT/batch.json."""
    ray = import_ray()
    describe_error = describe_error or one_line
    # A wrong checkpoint is one line here, not an error in every worker.
    config = with_absolute_paths(config, load_models(config.lifting, config.pose2d))
    config.out_root.mkdir(parents=True, exist_ok=True)
    connect(ray, ray_config)
    batch = BatchProgress(clips, config.show_progress)
    try:
        workers, resources, batch.cluster = start_workers(ray, config, ray_config, describe_error, len(clips))
        batch.workers, batch.resources = len(workers), resources
        run_clips(ray, workers, clips, batch, spare=lambda: new_worker(ray, config, ray_config, describe_error,
                                                                        resources))
    finally:
        batch.close()
        save_json(config.out_root / BATCH_FILE, batch.record(ray_config))
        ray.shutdown()
    failed = sum(r.status == "failed" for r in batch.results.values())
    return 0 if not failed else 2 if len(clips) == 1 else 1


def with_absolute_paths(config: RunConfig, models: Models) -> RunConfig:
    """The config with every weights file the user named as the absolute path `load_models` found: a worker runs in
    another folder, maybe on another machine."""
    lifting = dataclasses.replace(config.lifting, checkpoints=[lifter.checkpoint for lifter in models.lifters]
                                  if config.lifting.checkpoints else [])
    resolved = models.pose2d_config
    pose2d = dataclasses.replace(config.pose2d, detector=resolved.detector if config.pose2d.detector else None,
                                 hrnet_weights=resolved.hrnet_weights if config.pose2d.hrnet_weights else None)
    return dataclasses.replace(config, lifting=lifting, pose2d=pose2d)


def connect(ray, ray_config: RayConfig) -> None:
    """Start a local Ray instance or join the cluster at the address."""
    # Ray's progress-bar relay would otherwise replace builtins.print in this process for good (ray.experimental.
    # tqdm_ray): a side effect on everything else the process runs.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    # The Ultralytics settings of this process (read at its import), for the workers too (pipeline.app.process).
    env = ultralytics_environment()
    options = {"logging_level": logging.WARNING, "log_to_driver": True, "runtime_env": {"env_vars": env}}
    if ray_config.address in (None, "local"):
        ray.init(address="local", include_dashboard=False, **options)
        return
    hint = "start one with `ray start --head`, or give no address for one on this machine"
    check_reachable(ray_config.address, hint)
    try:
        ray.init(address=ray_config.address, **options)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise UserError(f"--ray {ray_config.address}: no Ray cluster to join there ({one_line(exc)}); {hint}") \
            from None


def check_reachable(address: str, hint: str) -> None:
    """Fail at once when nothing listens at a HOST:PORT or ray://HOST:PORT address (Ray itself retries for many
    minutes); other addresses ("auto") are Ray's to resolve."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UserError(f"--ray {address}: nothing answers there ({exc.strerror or exc}); {hint}") from None


def worker_resources(ray_config: RayConfig, config: RunConfig, cluster: dict) -> dict[str, float]:
    """What each worker asks for: CPUs and memory, and a share of a GPU where the cluster has GPUs."""
    resources = {"CPU": ray_config.cpus_per_worker, "memory": ray_config.memory_per_worker}
    if cluster.get("GPU", 0) > 0 and config.lifting.device in ("auto", "cuda"):
        resources["GPU"] = ray_config.gpus_per_worker
    return resources


def worker_count(cluster: dict, resources: dict[str, float], clips: int, wanted: int | None) -> int:
    """How many workers the cluster's resources fit (at most one per clip, at most `wanted`)."""
    fits = min(int(cluster.get(name, 0) / amount + 1e-9) for name, amount in resources.items() if amount > 0)
    if fits < 1:
        have = ", ".join(f"{name} {cluster.get(name, 0):g}" for name in resources)
        need = ", ".join(f"{name} {amount:g}" for name, amount in resources.items())
        raise UserError(f"the Ray cluster has {have}: not enough for one worker, which needs {need} "
                        "(memory in bytes; see RayConfig)")
    return max(1, min(fits, clips, wanted or fits))


def new_worker(ray, config: RunConfig, ray_config: RayConfig, describe_error, resources: dict[str, float]):
    """Start one ClipWorker actor; Ray restarts it when its process dies and retries the clip it was running."""
    options = {"num_cpus": resources["CPU"], "memory": resources["memory"], "num_gpus": resources.get("GPU", 0),
               "max_restarts": ray_config.max_restarts, "max_task_retries": ray_config.max_restarts,
               "max_concurrency": 2}
    worker_config = dataclasses.replace(config, show_progress=False)  # the driver shows the batch's progress
    return ray.remote(ClipWorker).options(**options).remote(worker_config, describe_error)


def start_workers(ray, config: RunConfig, ray_config: RayConfig, describe_error,
                  clips: int) -> tuple[list, dict, str]:
    """Start the pool and wait until every worker has loaded the networks (a worker that cannot is one error);
    returns the workers, what each asked for, and the cluster's address as the workers see it."""
    cluster = ray.cluster_resources()
    resources = worker_resources(ray_config, config, cluster)
    count = worker_count(cluster, resources, clips, ray_config.workers)
    log.info("Ray: %d workers (each %s) on a cluster with %s", count,
             ", ".join(f"{k} {v:g}" for k, v in resources.items()),
             ", ".join(f"{k} {cluster.get(k, 0):g}" for k in resources))
    workers = [new_worker(ray, config, ray_config, describe_error, resources) for _ in range(count)]
    try:
        cluster_address = ray.get([worker.where.remote() for worker in workers])[0]["address"]
    except ray.exceptions.RayError as exc:
        raise UserError(f"the Ray workers could not start: {last_line(exc)}") from None
    return workers, resources, cluster_address


def last_line(exc: BaseException) -> str:
    """The last non-empty line of a remote error (Ray's own messages end with the worker's exception)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def run_clips(ray, workers: list, clips: list[Path], batch: BatchProgress, spare: Callable[[], object]) -> None:
    """Hand each clip to the next idle worker until every clip is done; Ctrl-C interrupts the running clips."""
    pending = collections.deque(clips)
    idle, busy = list(workers), {}  # busy: the running call's ObjectRef -> (worker, clip)
    try:
        while pending or busy:
            while idle and pending:
                worker, clip = idle.pop(), pending.popleft()
                busy[worker.run.remote(clip)] = (worker, clip)
            done, _ = ray.wait(list(busy), num_returns=1)
            for ref in done:
                worker, clip = busy.pop(ref)
                try:
                    batch.finished(ray.get(ref))
                    idle.append(worker)
                except ray.exceptions.RayActorError as exc:  # it died more often than max_restarts: a fresh one
                    batch.finished(ClipResult(clip, "failed", f"its Ray worker died: {last_line(exc)}"))
                    idle.append(spare())
                except ray.exceptions.RayError as exc:
                    batch.finished(ClipResult(clip, "failed", last_line(exc)))
                    idle.append(worker)
    except KeyboardInterrupt:
        cancel_running(ray, busy, batch)
        raise


def cancel_running(ray, busy: dict, batch: BatchProgress) -> None:
    """Interrupt the running clips and collect what they report (within CANCEL_GRACE_SECONDS); then kill the
    workers."""
    for worker, _ in busy.values():
        worker.interrupt.remote()
    done, _ = ray.wait(list(busy), num_returns=len(busy), timeout=CANCEL_GRACE_SECONDS)
    for ref in done:
        try:
            batch.finished(ray.get(ref))
        except ray.exceptions.RayError:
            pass
    for worker, _ in busy.values():
        ray.kill(worker)


class BatchProgress:
    """The batch's progress bar (clips done, frames/s, failures, time left), its lines, and batch.json."""

    def __init__(self, clips: list[Path], show: bool) -> None:
        from tqdm import tqdm

        self.results = {clip: ClipResult(clip, "not started", "") for clip in clips}
        self.frames = 0  # processed in this run (skipped clips excluded): the batch's frames per second
        self.failed = 0
        self.workers: int | None = None
        self.cluster: str | None = None  # the cluster's address (GCS host:port) as its workers see it
        self.resources: dict | None = None
        self.started = datetime.now(timezone.utc)
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=len(clips), desc="clips", unit="clip", disable=not show, dynamic_ncols=True,
                        file=sys.stderr)
        self.bar.set_postfix_str("starting the Ray workers")

    def finished(self, result: ClipResult) -> None:
        """Record a clip's result and print its line: the summary on stdout, a failure on stderr."""
        from tqdm import tqdm

        self.results[result.clip] = result
        if result.status == "done":
            self.frames += result.frames or 0
        if result.status == "failed":
            self.failed += 1
            tqdm.write(f"error: {result.clip.name}: {result.message}", file=sys.stderr)
        elif result.status != "cancelled":
            tqdm.write(result.message, file=sys.stdout)
        self.bar.set_postfix_str(f"{self.frames / (time.perf_counter() - self.t0):.1f} frames/s, "
                                 f"{self.failed} failed", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
        sys.stdout.flush()

    def record(self, ray_config: RayConfig) -> dict:
        """batch.json: the batch's totals and every clip's status, frames, seconds and worker, in input order."""
        seconds = time.perf_counter() - self.t0
        statuses = collections.Counter(r.status for r in self.results.values())
        completed = statuses["done"]
        return {
            "address": ray_config.address or "local", "cluster": self.cluster, "workers": self.workers,
            "resources_per_worker": self.resources,
            "started": self.started.isoformat(timespec="seconds"), "seconds": round(seconds, 3),
            "clips": len(self.results), **{status: statuses[status] for status in
                                           ("done", "skipped", "failed", "cancelled", "not started")},
            "frames": self.frames, "frames_per_second": round(self.frames / seconds, 2) if seconds > 0 else None,
            "clips_per_minute": round(completed / seconds * 60, 2) if seconds > 0 else None,
            "results": [r.record() for r in self.results.values()],
        }
