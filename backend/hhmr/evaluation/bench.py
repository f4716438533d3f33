"""`hhmr bench`: latency and memory of each task on the current device."""

from __future__ import annotations

import platform
import resource
import statistics
import time

import torch

from hhmr.data.poses import PosePrior
from hhmr.sampling import HandDiffusionPipeline
from hhmr.training.data import synthetic_batch


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_bench(ns: tuple[int, ...] = (1, 8, 16), steps: int = 10, repeats: int = 5,
              device: str = "auto", weights: str | None = None) -> dict:
    from hhmr.device import pick_device

    dev = pick_device(device)
    pipe = HandDiffusionPipeline.from_pretrained(weights, device=str(dev))
    data = synthetic_batch(pipe.hand.cpu(), PosePrior(pipe.hand.cpu()), 1,
                           torch.Generator().manual_seed(123), 0.0, 0.0)
    keep = torch.ones(pipe.hand.num_vertices, dtype=torch.bool)
    keep[pipe.hand.weights.cpu()[:, 4:7].sum(1) > 0.5] = False  # regenerate the index finger
    tasks = {
        "generate": lambda n, s: pipe.generate(n, steps=steps),  # autoguided with a guide net
        "generate_net_alone": lambda n, s: pipe.generate(n, steps=steps, autoguidance=1.0),
        "inpaint": lambda n, s: pipe.inpaint(data.vertices[0], keep, n=n, steps=steps,
                                             guidance_scale=s),
        "refit3d": lambda n, s: pipe.refit3d(data.joints[0], n=n, steps=steps,
                                             guidance_scale=s),
        "fit2d": lambda n, s: pipe.fit2d(data.keypoints2d[0], None, data.K[0], n=n,
                                         steps=steps, guidance_scale=s),
    }
    if pipe.guide is None:
        del tasks["generate_net_alone"]  # the same as "generate"
    rows = []
    for task, fn in tasks.items():
        for guided in ((False,) if task.startswith("generate") else (False, True)):
            for n in ns:
                scale = None if guided else 0.0
                fn(n, scale)  # warm-up
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(dev)
                times = []
                for _ in range(repeats):
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    t0 = time.perf_counter()
                    fn(n, scale)
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    times.append((time.perf_counter() - t0) * 1000)
                rows.append({"task": task, "n": n, "steps": steps, "guidance": guided,
                             "median_ms": round(statistics.median(times), 1),
                             "peak_mb": round(_peak_mb(dev), 1)})
    return {"device": str(dev), "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "repeats": repeats, "results": rows,
            "peak_memory": "process peak RSS on CPU; peak allocated on CUDA"}


def run_service_bench(requests_per_client: int = 20, clients: tuple[int, ...] = (1, 8),
                      n: int = 1, steps: int = 10, device: str = "auto",
                      weights: str | None = None) -> dict:
    """Latency p50/p99 and throughput of `generate` against a real `hhmr serve` process on
    loopback, for 1 and 8 concurrent clients."""
    import shutil
    import socket
    import subprocess
    import threading

    from hhmr.client import HHMRClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    cmd = [shutil.which("hhmr") or "hhmr", "serve", "--bind", address, "--device", device]
    if weights:
        cmd += ["--weights", weights]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        HHMRClient(address, timeout_s=2.0, retries=60).info()
        rows = []
        for k in clients:
            lat: list[float] = []

            def worker(c: int, lat: list[float] = lat) -> None:
                client = HHMRClient(address, timeout_s=120, retries=0)
                for i in range(requests_per_client):
                    t0 = time.perf_counter()
                    client.call("generate", n=n, steps=steps, seed=c * 10_000 + i)
                    lat.append((time.perf_counter() - t0) * 1000)  # list.append is atomic

            threads = [threading.Thread(target=worker, args=(c,)) for c in range(k)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            lat.sort()
            rows.append({"clients": k, "requests": len(lat), "n": n, "steps": steps,
                         "p50_ms": round(statistics.median(lat), 1),
                         "p99_ms": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
                         "throughput_rps": round(len(lat) / wall, 2)})
        return {"op": "generate", "address": address, "results": rows}
    finally:
        proc.terminate()
        proc.wait(30)
