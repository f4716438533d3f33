"""The service under attack and overload (issue 30): each measured defect as a regression test
against a real `hhmr serve` process on loopback, plus the fuzz and the resend storm of
`hhmr.evaluation.service` (which `hhmr bench --service --faults` reports)."""

import time

import msgpack
import pytest
import zmq
from backend_process import free_port, start_server, stop_server
from hhmr import protocol as P
from hhmr.client import HandshakeFailed, HHMRClient, RemoteError, ServerGone
from hhmr.evaluation import service as S
from hhmr.paths import weights_dir
from hhmr.server import frontend
from hhmr.server.sockets import Incoming

pytestmark = pytest.mark.skipif(not (weights_dir() / "hhmr_prior.pt").exists(),
                                reason="no trained weights")
SLOW = {"n": 64, "steps": 200}  # a request that runs for tens of seconds on this CPU


def raw_socket(port: int) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{port}")
    return s


def finals(sock: zmq.Socket, count: int, timeout_s: float) -> list[P.Reply]:
    """The next `count` final replies on a socket (progress replies skipped)."""
    out, end = [], time.monotonic() + timeout_s
    while len(out) < count and time.monotonic() < end:
        if sock.poll(200):
            reply = P.parse_reply(P.unpack(sock.recv(), 1 << 30))
            if reply.status != "progress":
                out.append(reply)
    return out


@pytest.fixture(scope="module")
def small():
    """A server with a short queue: 4 waiting requests in all, 2 per client."""
    port = free_port()
    proc = start_server(port, "--max-queued", "4", "--max-queued-per-client", "2")
    yield port, proc
    out = stop_server(proc)
    assert proc.returncode == 0, out[-2000:]
    assert "model ready" in out and "warming up the photo path failed" not in out \
        and "MediaPipe failed" not in out, out[-3000:]


def test_deep_nesting_is_refused_and_the_server_lives(small):
    """Defect 1: a 1 KB request nested 1000 deep (msgpack allows 1024) killed the server
    (RecursionError from repr). Now BAD_MESSAGE with the request's id, ten times over."""
    port = small[0]
    deep = 1
    for _ in range(1000):
        deep = [deep]
    sock = raw_socket(port)
    try:
        for i in range(10):
            where = ("v", "guidance_space")[i % 2]
            msg = {"v": 1, "id": f"deep{i}", "op": "generate", "args": {}}
            if where == "v":
                msg["v"] = deep
            else:
                msg["args"]["guidance_space"] = deep
            data = msgpack.packb(msg)
            assert len(data) < 1200
            sock.send(data)
            (reply,) = finals(sock, 1, 10)
            assert reply.code == P.BAD_MESSAGE and reply.id == f"deep{i}"
            assert f"deeper than {P.MAX_DEPTH}" in reply.message
    finally:
        sock.close()
    assert HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=5, retries=0).info()


def test_a_bug_in_the_handler_is_an_internal_reply_not_the_end():
    """Whatever escapes a message's handling becomes INTERNAL with the request id."""
    sent = []

    class Link:
        def send(self, envelope, payload):
            sent.append(P.unpack(payload))

    server = frontend.Server.__new__(frontend.Server)
    server.link, server.limits = Link(), P.Limits()

    def broken(inc):
        raise RecursionError("a bug")

    server._handle = broken
    payload = P.pack(P.make_request("info", id="bug1"))
    server._serve_one(Incoming([b"peer"], b"conn:peer", b"peer", payload))
    server._serve_one(Incoming([b"peer"], b"conn:peer", b"peer", b"\xc1garbage"))
    assert [m["error"]["code"] for m in sent] == [P.INTERNAL, P.INTERNAL]
    assert [m["id"] for m in sent] == ["bug1", None]


def test_full_queue_answers_busy_and_queued_requests_hear_heartbeats(small):
    """Defect 2: the queue had no end and queued jobs heard nothing. Now a client past its
    share gets BUSY with a retry-after, and a queued request hears its position."""
    port = small[0]
    sock, other = raw_socket(port), raw_socket(port)
    try:
        sock.send(P.pack(P.make_request("generate", SLOW, id="q0")))
        while True:  # q0 runs
            reply = P.parse_reply(P.unpack(sock.recv(), 1 << 30))
            if reply.status == "progress" and reply.queued is None:
                break
        for rid in ("q1", "q2", "q3", "q4"):  # two wait, two are over this client's share
            sock.send(P.pack(P.make_request("generate", SLOW, id=rid)))
        busy, queued = [], {}
        end = time.monotonic() + 20
        while time.monotonic() < end and (len(busy) < 2 or len(queued) < 2):
            if sock.poll(200):
                reply = P.parse_reply(P.unpack(sock.recv(), 1 << 30))
                if reply.status == "error":
                    busy.append(reply)
                elif reply.queued is not None:
                    queued[reply.id] = reply.queued
        assert [(r.id, r.code) for r in busy] == [("q3", P.BUSY), ("q4", P.BUSY)]
        assert all(r.retry_after_s and r.retry_after_s > 0 for r in busy)
        assert queued == {"q1": 0, "q2": 1}
        # another client still gets in (4 in all may wait), then the whole queue is full
        other.send(P.pack(P.make_request("generate", SLOW, id="o1")))
        other.send(P.pack(P.make_request("generate", SLOW, id="o2")))
        time.sleep(0.5)
        third = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=5, retries=0)
        with pytest.raises(RemoteError) as err:
            third.call("generate", n=1, steps=1)
        assert err.value.code == P.BUSY and "full" in err.value.message
    finally:  # leave an idle server to the next test
        for s, ids in ((sock, ("q0", "q1", "q2")), (other, ("o1", "o2"))):
            for rid in ids:
                s.send(P.pack(P.make_request("cancel", {"target": rid})))
            finals(s, 2 * len(ids), 30)  # each cancel's reply and each request's end
            s.close()


def test_a_gone_client_leaves_no_work_behind(small):
    """Defect 2: 442 queued jobs of a client that closed its socket kept running. Now a
    dropped connection's requests are cancelled after a short grace, and the server is free."""
    port, proc = small
    sock = raw_socket(port)
    for i in range(2):  # this server queues 2 per client
        sock.send(P.pack(P.make_request("generate", SLOW, id=f"gone{i}")))
    time.sleep(1.0)
    sock.close()
    t0 = time.monotonic()
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=10, retries=3)
    client.call("generate", n=1, steps=2)  # waits behind nothing once the grace is over
    assert time.monotonic() - t0 < frontend.ORPHAN_GRACE_S + 8
    time.sleep(2 * frontend.HEARTBEAT_S)
    log = open(proc.log_path).read()
    ends = [line for line in log.splitlines() if " gone" in line]
    assert len(ends) == 2 and all("CANCELLED" in line for line in ends), ends
    assert "the client went away" in log


def test_deadline_ends_a_request_with_timeout(small):
    client = HHMRClient(f"tcp://127.0.0.1:{small[0]}", timeout_s=10, retries=0)
    t0 = time.monotonic()
    with pytest.raises(RemoteError) as err:
        client.call("generate", deadline_s=1.0, **SLOW)
    assert err.value.code == P.TIMEOUT and "deadline" in err.value.message
    assert time.monotonic() - t0 < 6


def test_status_and_cancel_see_only_the_callers_jobs(small):
    """Defect 4: `status` listed every client's jobs and a stranger could cancel them."""
    address = f"tcp://127.0.0.1:{small[0]}"
    owner = HHMRClient(address, timeout_s=10, retries=0)
    stranger = HHMRClient(address, timeout_s=10, retries=0)
    job = owner.submit("generate", **SLOW)
    while not job.progress:
        job.poll()
        time.sleep(0.05)
    assert job.id not in str(stranger.status())
    assert stranger.cancel(job.id)["found"] is False
    status = owner.status()
    assert job.id in status["running"] + status["queued"]
    assert job.cancel()["found"] is True
    with pytest.raises(RemoteError) as err:
        job.wait(30)
    assert err.value.code == P.CANCELLED


def test_killed_server_is_named_gone():
    port = free_port()
    proc = start_server(port)
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=1.5, retries=1)
    job = client.submit("generate", **SLOW)
    while not job.progress:
        job.poll()
        time.sleep(0.01)
    proc.kill()
    proc.wait(10)
    with pytest.raises(ServerGone) as err:
        job.wait(30)
    assert "down, unreachable or stuck" in str(err.value)


def test_sigterm_ends_every_request_with_cancelled():
    """A stopping server tells its clients: running and queued requests end CANCELLED."""
    port = free_port()
    proc = start_server(port)
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=10, retries=0)
    running, queued = client.submit("generate", **SLOW), client.submit("generate", **SLOW)
    while not (running.progress and queued.progress):
        running.poll(), queued.poll()
        time.sleep(0.01)
    out = stop_server(proc)
    for job in (running, queued):
        with pytest.raises(RemoteError) as err:
            job.wait(10)
        assert err.value.code == P.CANCELLED and "shutting down" in err.value.message
    assert proc.returncode == 0, out[-2000:]


def test_a_restarted_server_finishes_the_request():
    """ZeroMQ reconnects the client's socket to the new server and the client sends its
    request again on it: the request is served, not lost until a timeout."""
    port = free_port()
    first = start_server(port)
    client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=60, retries=0)
    job = client.submit("generate", n=8, steps=40, seed=3)
    while not job.progress:
        job.poll()
        time.sleep(0.01)
    first.kill()
    first.wait(10)
    second = start_server(port)
    try:
        result = job.wait(60)
        assert result["vertices"].shape == (8, 803, 3)
        assert f"{job.id} generate ok" in open(second.log_path).read()
    finally:
        stop_server(second)


def test_a_late_word_during_the_backoff_cancels_the_resend(monkeypatch):
    """A server slower than `timeout_s` whose reply comes while the client backs off: the
    client takes it from the old socket and sends nothing more."""
    import hhmr.client as C

    monkeypatch.setattr(C, "_backoff", lambda attempt: 3.0)
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        job = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=0.5, retries=2).submit("info")
        assert router.poll(5000)
        envelope = router.recv_multipart()[:-1]
        time.sleep(0.8)
        assert job.poll() is None  # silent past timeout_s: a resend is scheduled
        router.send_multipart(envelope + [P.pack(P.ok_reply(job.id, {"late": True}))])
        assert job.wait(5) == {"late": True}
        assert not router.poll(500)  # no resend came
    finally:
        router.close()


def test_a_dropped_job_stops_its_monitor_before_its_sockets_close():
    """A Job let go without close(): its monitor is disabled and both sockets closed, in that
    order; a monitor left without its reader would block ZeroMQ's I/O thread at the next
    connection event, and with it every later request of the process."""
    import gc

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    try:
        client = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=2.0, retries=0)
        job = client.submit("info")
        assert router.poll(5000)
        router.recv_multipart()  # never answered
        sock, monitor = job._sock, job._monitor
        assert sock._monitor_socket is monitor
        del job
        gc.collect()
        assert monitor.closed and sock.closed and sock._monitor_socket is None
        for _ in range(20):  # later requests connect, handshake and are answered
            later = client.submit("info")
            assert router.poll(5000)
            envelope = router.recv_multipart()[:-1]
            router.send_multipart(envelope + [P.pack(P.ok_reply(later.id, {"ok": 1}))])
            assert later.wait(5) == {"ok": 1}
    finally:
        router.close()


def test_a_job_closes_while_its_context_terminates():
    """close() on a Job whose context is being terminated (an add-on or app shutting down)
    closes both sockets, so the termination finishes instead of waiting on them forever."""
    import threading

    ctx = zmq.Context()
    job = HHMRClient(f"tcp://127.0.0.1:{free_port()}", timeout_s=2.0, retries=0,
                     context=ctx).submit("info")
    term = threading.Thread(target=ctx.term, daemon=True)
    term.start()
    time.sleep(0.3)
    job.close()
    term.join(10)
    assert not term.is_alive() and ctx.closed


def test_resend_storm_runs_each_id_once(small):
    """Defect 2: 12 clients (timeout 3 s, 2 retries) made the server run 33 jobs for 12
    ids. Each client here also resends its request twice on fresh sockets."""
    port, proc = small
    # the short queue of this server: 2 waiting per client, 4 in all, so a few clients wait
    # for room (BUSY, retried by the client after the server's retry-after)
    storm = S.resend_storm(f"tcp://127.0.0.1:{port}", clients=6, n=16, steps=10,
                           timeout_s=3.0, retries=6)
    assert set(storm["results"].values()) == {"ok"}, storm["results"]
    time.sleep(0.5)
    runs = S.jobs_per_id(open(proc.log_path).read())
    assert {rid: runs[rid] for rid in storm["results"]} == dict.fromkeys(storm["results"], 1)


def test_fuzz_of_10000_frames_gets_10000_answers_and_the_server_serves_on():
    port = free_port()
    proc = start_server(port, "--max-n", "2", "--max-steps", "2")
    try:
        report = S.fuzz(f"tcp://127.0.0.1:{port}", proc.pid, frames=10_000)
        print(report)
        assert report["answered"] == 10_000
        assert set(report["by_kind"]) == set(S.FUZZ_KINDS)
        assert report["replies"]["BAD_MESSAGE"] > 0 and report["replies"]["attached"] > 0
        assert report["info_after_ms"] < 1000
        assert proc.poll() is None
    finally:
        out = stop_server(proc)
    assert proc.returncode == 0 and "Traceback" not in out


def test_curve_admits_only_known_clients_and_names_a_failed_handshake(tmp_path):
    """Defect 4: CURVE admitted any key. Now only keys in --curve-clients; a stranger's key
    and a wrong server key are named as a failed handshake, not a bare timeout."""
    import zmq.auth

    public_file, secret_file = zmq.auth.create_certificates(tmp_path, "server")
    server_public = zmq.auth.load_certificate(public_file)[0]
    clients = tmp_path / "clients"
    clients.mkdir()
    _, known_secret = zmq.auth.create_certificates(clients, "known")
    _, stranger_secret = zmq.auth.create_certificates(tmp_path, "stranger")
    port = free_port()
    from backend_process import start_hhmr

    proc = start_hhmr("serve", "--bind", f"tcp://0.0.0.0:{port}",
                      "--curve-secret-key", secret_file, "--curve-clients", str(clients))
    address = f"tcp://127.0.0.1:{port}"
    try:
        known = HHMRClient(address, timeout_s=2.0, retries=60, curve_server_key=server_public,
                           curve_keypair=zmq.auth.load_certificate(known_secret))
        assert known.info()["topology"]["num_vertices"] == 803
        stranger = HHMRClient(address, timeout_s=5.0, retries=0,
                              curve_server_key=server_public,
                              curve_keypair=zmq.auth.load_certificate(stranger_secret))
        with pytest.raises(HandshakeFailed):
            stranger.info()
        wrong = HHMRClient(address, timeout_s=2.0, retries=0,
                           curve_server_key=zmq.curve_keypair()[0],
                           curve_keypair=zmq.auth.load_certificate(known_secret))
        with pytest.raises(HandshakeFailed) as err:
            wrong.info()
        assert "public key" in str(err.value)
        with pytest.raises(HandshakeFailed, match="expects CurveZMQ"):
            HHMRClient(address, timeout_s=5.0, retries=0).info()  # no keys: named at once
    finally:
        stop_server(proc)


def test_curve_without_a_client_list_is_refused(tmp_path):
    import subprocess

    import zmq.auth

    _, secret_file = zmq.auth.create_certificates(tmp_path, "server")
    from shutil import which

    r = subprocess.run([which("hhmr"), "serve", "--bind", f"tcp://0.0.0.0:{free_port()}",
                        "--curve-secret-key", secret_file], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 1 and "--curve-clients" in r.stderr
