"""End-to-end: `hhmr serve --workers N` supervises its workers (the Paranoid Pirate pattern):
real processes on loopback, started the way users start them, logs in files."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import zmq
from backend_process import broker_state, free_port, start_hhmr
from hhmr import protocol as P
from hhmr.client import HHMRClient, RemoteError
from hhmr.paths import weights_dir
from hhmr.server.worker_link import HEARTBEAT, READY, REPLY, pid_of

WEIGHTS = weights_dir() / "hhmr_prior.pt"
pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="no trained weights")


def start_broker(port: int, *extra: str) -> subprocess.Popen:
    return start_hhmr("serve", "--bind", f"tcp://127.0.0.1:{port}", *extra)


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM and wait (SIGKILL if it hangs); the process's log."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return Path(proc.log_path).read_text()


def running(pid: int) -> bool:
    """Whether a process runs (a zombie waiting for its parent to reap it does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def ask(port: int, payload: bytes, timeout_s: float = 30) -> dict:
    """One request on a fresh DEALER socket, as a client's resend is; its final reply."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{port}")
    try:
        s.send(payload)
        while s.poll(int(timeout_s * 1000)):
            reply = P.unpack(s.recv())
            if reply["status"] != "progress":
                return reply
        raise TimeoutError
    finally:
        s.close()


def test_killed_worker_is_restarted():
    port = free_port()
    proc = start_broker(port, "--workers", "2")
    try:
        state = broker_state(port, lambda s: s["workers"] == 2)
        assert state["restarts"] == 0 and state["slots"] == 2
        victim = pid_of(state["worker"].encode())
        assert victim in children(proc.pid)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        state = broker_state(port, lambda s: s["restarts"] == 1 and s["workers"] == 2, 60)
        seconds = time.monotonic() - t0
        print(f"killed worker replaced in {seconds:.1f} s (broker: {state['replace_s']:.1f} s)")
        assert seconds < 30
        assert state["last_restart_s"] < seconds + 1 and state["replace_s"] < seconds + 1
        assert victim not in children(proc.pid) and len(children(proc.pid)) == 2
        c = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=60, retries=0)
        assert c.hypotheses("generate", n=1, steps=1).vertices.shape == (1, 803, 3)
        workers = children(proc.pid)
    finally:
        out = stop(proc)
    # SIGTERM: the broker stops its workers, which stop cleanly, and exits 0
    assert proc.returncode == 0, out
    assert "restarting worker slot" in out and "broker stopped" in out
    assert out.count("stopped after") == 2
    assert not any(running(pid) for pid in workers)


def test_workers_exit_when_the_broker_is_killed():
    port = free_port()
    proc = start_broker(port, "--workers", "2")
    workers = []
    try:
        broker_state(port, lambda s: s["workers"] == 2)
        workers = children(proc.pid)
        assert len(workers) == 2
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        while any(running(pid) for pid in workers) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        seconds = time.monotonic() - t0
        print(f"workers exited {seconds:.1f} s after the broker was killed")
        assert not any(running(pid) for pid in workers), Path(proc.log_path).read_text()
        out = Path(proc.log_path).read_text()
        assert out.count("broker gone") == 2 and out.count("stopped after") == 2
    finally:
        for pid in workers:
            if running(pid):
                os.kill(pid, signal.SIGKILL)


def test_non_loopback_backend_is_refused():
    """A fake worker on an open backend would take clients' requests and forge replies: the
    broker refuses to start with one, and a worker refuses an unencrypted remote broker."""
    port, backend = free_port(), free_port()
    r = start_hhmr("serve", "--bind", f"tcp://127.0.0.1:{port}", "--broker-only",
                   "--backend", f"tcp://0.0.0.0:{backend}")
    assert r.wait(60) == 1
    out = Path(r.log_path).read_text()
    assert "refusing to bind the backend" in out and "--worker-keys" in out
    w = start_hhmr("worker", "--connect", f"tcp://192.0.2.1:{backend}")
    assert w.wait(60) == 1
    assert "--curve-server-key" in Path(w.log_path).read_text()


def test_curve_backend_admits_only_known_workers(tmp_path):
    import zmq.auth

    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    allowed = tmp_path / "workers"
    allowed.mkdir()
    zmq.auth.create_certificates(allowed, "known")
    zmq.auth.create_certificates(tmp_path, "stranger")  # not in --worker-keys
    server_key = zmq.auth.load_certificate(server_public)[0]
    port, backend = free_port(), free_port()
    proc = start_broker(port, "--workers", "1", "--backend", f"tcp://0.0.0.0:{backend}",
                        "--curve-secret-key", server_secret, "--worker-keys", str(allowed))
    ctx = zmq.Context.instance()
    fakes = []
    known = None
    try:
        broker_state(port, lambda s: s["workers"] == 1, curve_server_key=server_key)
        # fake workers: one with an unknown key, one without CurveZMQ
        for keys in (zmq.auth.load_certificate(tmp_path / "stranger.key_secret"), None):
            fake = ctx.socket(zmq.DEALER)
            fake.setsockopt(zmq.LINGER, 0)
            fake.setsockopt(zmq.ROUTING_ID, b"666-fake")
            if keys is not None:
                fake.curve_serverkey = server_key
                fake.curve_publickey, fake.curve_secretkey = keys
            fake.connect(f"tcp://127.0.0.1:{backend}")
            fakes.append(fake)
        for _ in range(10):
            for fake in fakes:
                for frames in ([READY], [HEARTBEAT], [REPLY, b"x", b"forged"]):
                    try:
                        fake.send_multipart(frames, zmq.NOBLOCK)
                    except zmq.Again:  # no connection to queue it on: refused
                        pass
            state = broker_state(port, lambda s: True, curve_server_key=server_key)
            assert state["workers"] == 1 and state["worker"] != "666-fake"
        assert not any(fake.poll(0) for fake in fakes)  # no request ever reached a fake
        # a worker with a key from --worker-keys joins; on SIGTERM it stops cleanly
        known = start_hhmr("worker", "--connect", f"tcp://127.0.0.1:{backend}",
                           "--curve-server-key", server_public,
                           "--curve-secret-key", str(allowed / "known.key_secret"))
        broker_state(port, lambda s: s["workers"] == 2, curve_server_key=server_key)
    finally:
        for fake in fakes:
            fake.close()
        worker_log = stop(known) if known is not None else ""
        out = stop(proc)
    assert known.returncode == 0 and "stopped after" in worker_log, worker_log
    assert proc.returncode == 0, out
    assert "refused a worker connection" in out


@pytest.fixture(scope="module")
def two_workers():
    port = free_port()
    proc = start_broker(port, "--workers", "2")
    broker_state(port, lambda s: s["workers"] == 2)
    yield port
    out = stop(proc)
    assert proc.returncode == 0, out


def test_resend_reaches_the_same_worker(two_workers):
    """A request resent with its id (on a fresh socket, as the client's Lazy Pirate does)
    reaches the worker the first one reached; different ids spread over both workers."""
    chosen = {}
    for k in range(20):
        payload = P.pack(P.make_request("info", id=f"resend-{k}"))
        answered = {ask(two_workers, payload)["result"]["broker"]["worker"] for _ in range(3)}
        assert len(answered) == 1
        chosen[k] = answered.pop()
    assert len(set(chosen.values())) == 2


def test_cancel_reaches_the_worker_of_its_target(two_workers):
    c = HHMRClient(f"tcp://127.0.0.1:{two_workers}", timeout_s=30, retries=0)
    for _ in range(3):  # a cancel routed by its own id would miss half of the time
        job = c.submit("generate", n=1, steps=200)
        while not job.progress:
            assert job.poll() is None
            time.sleep(0.01)
        assert c.cancel(job.id)["found"]
        with pytest.raises(RemoteError) as err:
            job.wait(30)
        assert err.value.code == P.CANCELLED


def test_no_live_worker_answers_busy():
    port = free_port()
    proc = start_broker(port, "--broker-only")
    try:
        c = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=30, retries=0)
        with pytest.raises(RemoteError) as err:
            c.info()
        assert err.value.code == P.BUSY and "no worker is ready" in err.value.message
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
