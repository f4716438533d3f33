"""The service under load and under attack: a real `hhmr serve` process on loopback, driven
the way clients drive it. `hhmr bench --service` runs `load`; `hhmr bench --service --faults`
runs `fuzz` and `resend_storm` too. The tests call the same functions."""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zmq

from hhmr import protocol as P
from hhmr.client import HHMRClient, RemoteError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def service(*extra: str, device: str = "auto", weights: str | None = None,
            threads: int | None = 1):
    """A real `hhmr serve` on a free loopback port, with `threads` OpenMP threads (None:
    torch's default, as the add-on starts it); yields (process, address); its log is a
    file (`process.log_path`)."""
    address = f"tcp://127.0.0.1:{free_port()}"
    cmd = [shutil.which("hhmr") or "hhmr", "serve", "--bind", address, "--device", device,
           *extra]
    if weights:
        cmd += ["--weights", weights]
    log = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    proc.log_path = log.name
    try:
        HHMRClient(address, timeout_s=2.0, retries=60).info()  # waits for the model
        yield proc, address
    finally:
        proc.terminate()
        proc.wait(60)
        log.close()


def rss_mb(pid: int) -> float:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _percentile(sorted_ms: list[float], q: float) -> float:
    return round(sorted_ms[min(len(sorted_ms) - 1, int(q * len(sorted_ms)))], 1)


def load(address: str, clients: int, requests: int, n: int = 1, steps: int = 10) -> dict:
    """`clients` threads, each with its own HHMRClient, each making `requests` generate
    calls one after another: latency percentiles, throughput and wrong replies."""
    lat: list[float] = []
    wrong: list[str] = []

    def worker(c: int) -> None:
        client = HHMRClient(address, timeout_s=30, retries=2)
        for i in range(requests):
            t0 = time.perf_counter()
            seed = c * 10_000 + i
            try:
                h = client.hypotheses("generate", n=n, steps=steps, seed=seed)
            except (RemoteError, TimeoutError) as err:
                wrong.append(f"{type(err).__name__}: {err}")
                continue
            if h.vertices.shape[0] != n or not np.isfinite(h.vertices).all():
                wrong.append(f"bad result for seed {seed}")
            lat.append((time.perf_counter() - t0) * 1000)  # list.append is atomic

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    return {"clients": clients, "requests": clients * requests, "answered": len(lat),
            "failed": len(wrong), "failures": wrong[:5], "n": n, "steps": steps,
            "p50_ms": round(statistics.median(lat), 1) if lat else None,
            "p95_ms": _percentile(lat, 0.95) if lat else None,
            "p99_ms": _percentile(lat, 0.99) if lat else None,
            "throughput_rps": round(len(lat) / wall, 2)}


# ---- fuzz ---------------------------------------------------------------------------------
def _nested(depth: int, leaf) -> object:
    for _ in range(depth):
        leaf = [leaf]
    return leaf


FUZZ_KINDS = ("bytes", "bit_flips", "deep_nesting", "declared_sizes", "nan_and_inf",
              "wrong_types", "repeated_ids", "bad_envelope")


def fuzz_frame(kind: str, rng: random.Random, i: int, valid: bytes) -> bytes:
    """One hostile frame of a kind: random bytes, a valid request with bits flipped, nesting
    near msgpack's 1024 levels at every field, array maps that declare sizes their data do
    not have, NaN and infinities, a wrong type at every field, ids repeated across requests,
    envelopes with missing or extra fields."""
    if kind == "bytes":
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
    if kind == "bit_flips":
        b = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "deep_nesting":
        deep = _nested(rng.randrange(17, 1000), 1)
        field = rng.choice(["v", "id", "op", "args", "n", "guidance_space", "joints", "shape"])
        if field in ("v", "id", "op", "args"):
            msg = {"v": 1, "id": f"d{i}", "op": "generate", "args": {}}
            msg[field] = deep
        elif field == "shape":
            msg = {"v": 1, "id": f"d{i}", "op": "refit3d", "args": {"joints": {
                "__nd__": True, "dtype": "<f4", "shape": deep, "data": b""}}}
        else:
            msg = {"v": 1, "id": f"d{i}", "op": "refit3d", "args": {field: deep}}
        return P.pack(msg)
    if kind == "declared_sizes":
        choice = rng.randrange(4)
        if choice == 0:  # an array map whose shape wants far more bytes than it carries
            arr = {"__nd__": True, "dtype": "<f4", "shape": [2**20, 2**20, 3], "data": b"x"}
            return P.pack({"v": 1, "id": f"s{i}", "op": "refit3d", "args": {"joints": arr}})
        if choice == 1:  # msgpack headers that declare 2**32-1 elements / bytes
            return rng.choice([b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff",
                               b"\xc6\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]) + b"\x00" * 8
        if choice == 2:  # a map of 10,001 entries, over the container limit
            return P.pack({"v": 1, "id": f"s{i}", "op": "generate",
                           "args": {str(k): k for k in range(10_001)}})
        return P.pack({"v": 1, "id": f"s{i}", "op": "reconstruct",  # header says 65535^2
                       "args": {"image": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
                                + (65535).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"}})
    if kind == "nan_and_inf":
        bad = rng.choice([np.nan, np.inf, -np.inf, 1e308, -1e308])
        op = rng.choice(["refit3d", "fit2d", "generate", "inpaint"])
        args = {"refit3d": {"joints": np.full((21, 3), bad, np.float64)},
                "fit2d": {"keypoints": np.full((21, 2), bad, np.float64)},
                "generate": {"guidance_scale": float(bad), "autoguidance": float(bad)},
                "inpaint": {"vertices": np.full((803, 3), bad, np.float64),
                            "keep": np.ones(803, bool)}}[op]
        return P.pack({"v": 1, "id": f"x{i}", "op": op, "args": args})
    if kind == "wrong_types":
        junk = rng.choice([None, True, -1, 2**63, 1.5, "s", b"b", [], {}, [1, [2]],
                           {"a": {"b": 1}}, "x" * 70])
        field = rng.choice(["v", "id", "op", "args", "n", "steps", "seed", "guidance_scale",
                            "guidance_space", "central_first", "joints", "target",
                            "deadline_s"])
        msg = {"v": 1, "id": f"t{i}", "op": "refit3d" if field != "target" else "cancel",
               "args": {"joints": np.zeros((21, 3), np.float32)}}
        if field in msg:
            msg[field] = junk
        else:
            msg["args"][field] = junk
        return P.pack(msg)
    if kind == "repeated_ids":  # a handful of ids, over and over, with cheap valid requests
        return P.pack(P.make_request("refit3d", {"joints": np.zeros((21, 3), np.float32),
                                                 "n": 1, "steps": 1}, id=f"r{i % 5}"))
    # bad_envelope
    msg = rng.choice([[1, 2, 3], "request", 42, {"id": f"e{i}", "op": "info"},
                      {"v": 1, "id": f"e{i}", "op": "info", "extra": 1},
                      {"v": 1, "op": "info"}, {"v": 1, "id": "", "op": "info"},
                      {"v": 1, "id": f"e{i}", "op": "info", "args": [1]}])
    return P.pack(msg)


def fuzz(address: str, pid: int, frames: int = 10_000, seed: int = 0) -> dict:
    """Send `frames` hostile frames (each of FUZZ_KINDS in turn) from one socket, reading
    replies as it goes; then check the server still answers `info`. Every frame must get a
    final reply, except resends of an id under way (they get a progress reply saying so)."""
    rng = random.Random(seed)
    valid = P.pack(P.make_request("refit3d", {"joints": np.zeros((21, 3), np.float32),
                                              "n": 1, "steps": 1}))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    rss_before = rss_mb(pid)
    by_kind: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    answered = 0
    t0 = time.perf_counter()

    def drain(until: int, deadline: float) -> int:
        got = 0
        while answered + got < until and time.perf_counter() < deadline:
            if not sock.poll(1000):
                continue
            reply = P.parse_reply(P.unpack(sock.recv(), 1 << 30))
            if reply.status != "progress":
                codes[reply.code or "ok"] += 1
                got += 1
            elif "attached" in reply.message:
                codes["attached"] += 1
                got += 1
        return got

    try:
        for i in range(frames):
            kind = FUZZ_KINDS[i % len(FUZZ_KINDS)]
            by_kind[kind] += 1
            sock.send(fuzz_frame(kind, rng, i, valid))
            if i % 100 == 99:
                answered += drain(i + 1, time.perf_counter() + 60)
        answered += drain(frames, time.perf_counter() + 120)
    finally:
        sock.close()
    seconds = time.perf_counter() - t0
    info_ms = []
    client = HHMRClient(address, timeout_s=10, retries=0)
    for _ in range(5):
        t1 = time.perf_counter()
        client.info()
        info_ms.append((time.perf_counter() - t1) * 1000)
    return {"frames": frames, "by_kind": dict(by_kind), "answered": answered,
            "replies": dict(codes), "seconds": round(seconds, 1),
            "server_rss_mb_before": round(rss_before, 1),
            "server_rss_mb_after": round(rss_mb(pid), 1),
            "info_after_ms": round(statistics.median(info_ms), 1)}


def jobs_per_id(log_text: str) -> Counter[str]:
    """How many times the server ran each request id (its log's final line per job)."""
    return Counter(m.group(1) for m in re.finditer(
        r"hhmr\.serve (\S+) \w+ (?:ok|error)(?: \w+)? n=\d+ steps=\d+ batch=", log_text))


def resend_storm(address: str, clients: int = 12, n: int = 64, steps: int = 20,
                 timeout_s: float = 3.0, retries: int = 2, raw_resends: int = 2) -> dict:
    """The issue's storm: `clients` clients at once (timeout_s=3, retries=2, generate n=64,
    20 steps); each also resends its request `raw_resends` times on fresh sockets, as a
    client that lost patience would. Returns the ids and what each client got; count the
    server's jobs per id with `jobs_per_id` on its log."""
    results: dict[str, str] = {}

    def worker(c: int) -> None:
        client = HHMRClient(address, timeout_s=timeout_s, retries=retries)
        job = client.submit("generate", n=n, steps=steps, seed=c)
        for _ in range(raw_resends):  # the same id again, from a new socket
            time.sleep(0.2)
            job._send()
        try:
            job.wait()
            results[job.id] = "ok"
        except (RemoteError, TimeoutError) as err:
            results[job.id] = f"{type(err).__name__}: {err}"[:120]

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"clients": clients, "n": n, "steps": steps, "timeout_s": timeout_s,
            "retries": retries, "raw_resends": raw_resends, "results": results,
            "seconds": round(time.perf_counter() - t0, 1)}
