"""End-to-end: `hhmr serve --workers N` supervises its workers (the Paranoid Pirate pattern):
real processes on loopback, started the way users start them, logs in files."""

import os
import re
import shutil
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
from hhmr.server.broker import Broker, Slot
from hhmr.server.sockets import Incoming, connect_dealer
from hhmr.server.worker_link import GONE, HEARTBEAT, READY, REPLY, REQUEST, WorkerLink, pid_of

WEIGHTS = weights_dir() / "hhmr_prior.pt"
needs_weights = pytest.mark.skipif(not WEIGHTS.exists(), reason="no trained weights")


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


@needs_weights
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


@needs_weights
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
        # a killed broker leaves its private folder (the ipc:// backend) behind
        found = re.search(r"backend ipc://(/\S+)/workers", Path(proc.log_path).read_text())
        if found:
            shutil.rmtree(found.group(1), ignore_errors=True)


@needs_weights
def test_non_loopback_backend_is_refused():
    """A fake worker on an open backend would take clients' requests and forge replies: the
    broker refuses to start with one, and a worker refuses an unencrypted remote broker."""
    port, backend = free_port(), free_port()
    r = start_hhmr("serve", "--bind", f"tcp://127.0.0.1:{port}", "--broker-only",
                   "--backend", f"tcp://0.0.0.0:{backend}")
    w = start_hhmr("worker", "--connect", f"tcp://192.0.2.1:{backend}")
    try:
        r.wait(60)
        w.wait(60)
    finally:
        out, worker_out = stop(r), stop(w)
    assert r.returncode == 1 and "refusing to bind the backend" in out, out
    assert "--worker-keys" in out
    assert w.returncode == 1 and "--curve-server-key" in worker_out, worker_out


@needs_weights
def test_curve_backend_admits_only_known_workers(tmp_path):
    import zmq.auth

    server_public, server_secret = zmq.auth.create_certificates(tmp_path, "server")
    allowed = tmp_path / "workers"
    allowed.mkdir()
    zmq.auth.create_certificates(allowed, "known")
    zmq.auth.create_certificates(tmp_path, "stranger")  # not in --worker-keys
    clients = tmp_path / "clients"
    clients.mkdir()
    client_public, client_secret = zmq.auth.create_certificates(clients, "client")
    server_key = zmq.auth.load_certificate(server_public)[0]
    me = {"curve_server_key": server_key,
          "curve_keypair": zmq.auth.load_certificate(client_secret)}
    port, backend = free_port(), free_port()
    proc = start_broker(port, "--workers", "1", "--backend", f"tcp://0.0.0.0:{backend}",
                        "--curve-secret-key", server_secret, "--worker-keys", str(allowed),
                        "--curve-clients", str(clients))
    ctx = zmq.Context.instance()
    fakes = []
    known = None
    try:
        broker_state(port, lambda s: s["workers"] == 1, **me)
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
            state = broker_state(port, lambda s: True, **me)
            assert state["workers"] == 1 and state["worker"] != "666-fake"
        assert not any(fake.poll(0) for fake in fakes)  # no request ever reached a fake
        # a worker with a key from --worker-keys joins; on SIGTERM it stops cleanly
        known = start_hhmr("worker", "--connect", f"tcp://127.0.0.1:{backend}",
                           "--curve-server-key", server_public,
                           "--curve-secret-key", str(allowed / "known.key_secret"))
        broker_state(port, lambda s: s["workers"] == 2, **me)
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


@needs_weights
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


@needs_weights
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


@needs_weights
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


def test_restarts_back_off_and_stop_at_the_cap():
    """A worker that always dies at once: restarted 1, 2, 4, 8, 16 s after each death, then,
    5 restarts within 10 minutes, its slot is left down."""
    broker = Broker(f"tcp://127.0.0.1:{free_port()}", 0)

    class Dead:
        pid, returncode = 999_999, 1

        def poll(self):
            return 1

    clock = [0.0]
    starts = []

    def start(slot):
        slot.proc, slot.started = Dead(), clock[0]
        starts.append(clock[0])

    try:
        slot = Slot(0)
        broker.slots = [slot]
        broker._start = start
        start(slot)
        starts.clear()
        for ms in range(0, 120_000, 100):  # the loop's turns, every 0.1 s for 2 minutes
            clock[0] = ms / 1000
            broker._supervise(clock[0])
        gaps = [round(b - a, 1) for a, b in zip(starts, starts[1:], strict=False)]
        assert starts[0] == 1.0 and gaps == [2.1, 4.1, 8.1, 16.1]  # death seen 0.1 s later
        assert broker.restarts == 5 and slot.down and slot.backoff == 30  # capped
    finally:
        broker.close()


def test_a_worker_stuck_loading_is_killed_and_restarted():
    """A worker that never says READY (stuck while loading its model) is killed READY_S
    after its start, without blocking the broker's loop, and its slot restarts with the
    backoff it had (a stuck worker is no healthy one); a worker that said READY is left to
    the heartbeats."""
    import subprocess

    from hhmr.server.broker import READY_S

    broker = Broker(f"tcp://127.0.0.1:{free_port()}", 0)
    stuck, ready, other = (subprocess.Popen(["sleep", "600"]) for _ in range(3))
    try:
        slot = Slot(0, proc=stuck, started=0.0, backoff=8.0)
        fine = Slot(1, proc=ready, started=0.0)
        broker.slots = [slot, fine]
        broker._ready(f"{ready.pid}-worker".encode(), 1.0)  # its READY
        assert fine.ready and not slot.ready
        broker._supervise(READY_S - 1)
        assert stuck.poll() is None and slot.proc is stuck  # still loading: left alone
        broker._supervise(READY_S + 1)
        assert slot.killed and stuck.wait(10) is not None  # killed, not waited for
        broker._supervise(READY_S + 2)  # that turn or this one sees it gone
        assert slot.proc is None and slot.died in (READY_S + 1, READY_S + 2)
        assert slot.restart_at == slot.died + 8.0  # the backoff it had, not reset
        assert ready.poll() is None and fine.proc is ready
        # workers under other pids than those started (a launcher between): no deadline
        late = Slot(2, proc=other, started=0.0)
        broker.slots = [late]
        broker._ready(b"1-worker", READY_S)  # pid 1: no slot's
        broker._supervise(2 * READY_S)
        assert broker.unmatched_ready and other.poll() is None and not late.killed
    finally:
        for p in (stuck, ready, other):
            if p.poll() is None:
                p.kill()
                p.wait()
        broker.close()


def test_worker_link_frames():
    """WorkerLink speaks the broker's frames with RouterLink's interface, and notices a
    silent broker."""
    ctx = zmq.Context()
    broker = ctx.socket(zmq.ROUTER)
    broker.setsockopt(zmq.LINGER, 0)
    port = free_port()
    broker.bind(f"tcp://127.0.0.1:{port}")
    lost = []
    link = WorkerLink(connect_dealer(ctx, f"tcp://127.0.0.1:{port}"),
                      on_lost=lambda: lost.append(1), heartbeat_s=0.1)
    try:
        link.tick()
        assert broker.poll(5000)
        wid, *frames = broker.recv_multipart()
        assert frames == [READY] and pid_of(wid) == os.getpid()
        broker.send_multipart([wid, REQUEST, b"client", b"tok:owner", b"conn", b"payload"])
        broker.send_multipart([wid, GONE, b"conn"])
        broker.send_multipart([wid, HEARTBEAT])
        got = []
        deadline = time.monotonic() + 5
        while len(got) < 3 and time.monotonic() < deadline:
            if link.socket.poll(100):
                got.append(link.recv())
        assert got == [Incoming([b"client"], b"tok:owner", b"conn", b"payload"), None, None]
        assert link.gone() == [b"conn"] and link.gone() == []
        link.send([b"client"], b"result")
        assert broker.poll(5000) and broker.recv_multipart() == [wid, REPLY, b"client",
                                                                 b"result"]
        time.sleep(0.15)
        link.tick()  # a heartbeat every interval
        assert broker.poll(5000) and broker.recv_multipart() == [wid, HEARTBEAT]
        assert not link.broker_lost
        time.sleep(0.35)  # the broker silent for over 3 intervals
        link.tick()
        assert link.broker_lost and lost == [1]
    finally:
        link.close()
        broker.close()
        ctx.term()
