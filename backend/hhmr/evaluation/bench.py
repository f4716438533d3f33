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


def run_service_bench(requests_per_client: int = 30, clients: tuple[int, ...] = (1, 16),
                      n: int = 1, steps: int = 10, device: str = "auto",
                      weights: str | None = None, faults: bool = False) -> dict:
    """Latency p50/p95/p99 and throughput of `generate` against a real `hhmr serve` process
    on loopback, for 1 and 16 concurrent clients; with `faults`, also a 10,000-frame fuzz
    and the resend storm (hhmr.evaluation.service)."""
    from hhmr.evaluation import service as S

    with S.service(device=device, weights=weights) as (proc, address):
        rows = [S.load(address, k, requests_per_client, n, steps) for k in clients]
        result = {"op": "generate", "address": address, "results": rows}
        if faults:
            result["fuzz"] = S.fuzz(address, proc.pid)
            storm = S.resend_storm(address)
            time.sleep(1.0)  # the last log lines
            runs = S.jobs_per_id(open(proc.log_path).read())
            storm["jobs_per_id"] = {rid: runs[rid] for rid in storm["results"]}
            result["resend_storm"] = storm
    return result


RECONSTRUCT_STAGES = ("decode_ms", "detect_ms", "sample_ms", "pose_ms")


def run_reconstruct_bench(photos: list[str], n: int = 8, steps: int = 10, repeats: int = 5,
                          pose: bool = True, device: str = "auto", weights: str | None = None,
                          mode: str | None = None) -> dict:
    """`reconstruct` the way the add-on asks for it (a photo file, n hypotheses with their rig
    poses, an `info` first) against a real `hhmr serve` on loopback started as the add-on
    starts it (torch's default threads), after one warm-up request: per photo the
    median round trip and the server's stages (decode, detect, sample and score, pose solve;
    `reply_ms` is the round trip less the server's compute: encoding, transport, decoding)."""
    from pathlib import Path

    from hhmr.client import HHMRClient
    from hhmr.evaluation import service as S

    rows = []
    with S.service(device=device, weights=weights, threads=None) as (_, address):
        client = HHMRClient(address, timeout_s=120, retries=0)
        client.info()  # as the add-on does (before each request; once is enough here)
        opts = {"n": n, "steps": steps, "pose": pose, **({"mode": mode} if mode else {})}
        for photo in photos:
            data = Path(photo).read_bytes()
            client.call("reconstruct", image=data, **opts)  # warm-up
            trips, stages = [], {}
            for _ in range(repeats):
                t0 = time.perf_counter()
                res = client.call("reconstruct", image=data, **opts)
                trips.append((time.perf_counter() - t0) * 1000)
                first = res["hands"][0]["timings"]
                for k in RECONSTRUCT_STAGES:
                    stages.setdefault(k, []).append(first.get(k, 0.0))
                stages.setdefault("reply_ms", []).append(
                    trips[-1] - res["timings"]["compute_s"] * 1000)
            rows.append({"photo": Path(photo).name, "hands": len(res["hands"]), "n": n,
                         "steps": steps, "pose": pose,
                         "round_trip_ms": round(statistics.median(trips), 1),
                         **{k: round(statistics.median(v), 1) for k, v in stages.items()}})
    return {"op": "reconstruct", "threads": torch.get_num_threads(),  # the server's default
            "machine": platform.processor() or platform.machine(), "results": rows}
