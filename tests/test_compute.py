"""The compute loop's replies (hhmr.server.compute), in-process with a stand-in pipeline:
results with NaN or infinite values never go out as "ok"."""

import threading

import numpy as np
import pytest
import torch
from hhmr import protocol as P
from hhmr.sampling import Hypotheses
from hhmr.server import compute

V = 803


class StandInPipe:
    """Plans anything; `run` returns `make(plan)` per plan after one progress step."""

    def __init__(self, make):
        self.make = make

    def plan(self, task, options):
        return task, options

    def run(self, plans, progress=None):
        progress(0, 1)
        return [self.make(p) for p in plans]


class Sink:
    """Takes the progress replies the thread would push to the socket thread."""

    def __init__(self):
        self.sent = []

    def send_multipart(self, frames):
        self.sent.append(frames)


def hypotheses(n: int = 2, vertex: float = 0.0, score: float = 0.0) -> Hypotheses:
    return Hypotheses(torch.full((n, V, 3), vertex), torch.zeros(n, 21, 3),
                      torch.full((n,), score))


def reply(op: str, args: dict, pipe) -> dict:
    worker = compute.ComputeLoop(threading.Event())
    worker.pipe = pipe
    item = compute.QueuedRequest([b"peer"], P.validate_request(P.make_request(op, args)))
    return worker._run_batch([item], Sink())[0]


JOINTS = np.zeros((21, 3), np.float32)


def test_the_solved_pose_goes_out_with_the_hypotheses():
    def make(plan):
        task, options = plan
        h = hypotheses()
        assert options.pose  # asked for on the wire, it reaches the pipeline
        h.pose = {"global_orient": torch.zeros(2, 3), "hand_pose": torch.zeros(2, 15, 3),
                  "transl": torch.ones(2, 3), "betas": torch.zeros(2, 7),
                  "corrective": torch.zeros(2, V, 3), "fit_error": torch.zeros(2)}
        return h

    r = reply("generate", {"n": 2, "pose": True}, StandInPipe(make))
    assert r["status"] == "ok"
    res = r["result"]
    assert set(res["pose"]) == {"global_orient", "hand_pose", "transl"}
    assert res["pose"]["transl"].shape == (2, 3) and res["betas"].shape == (2, 7)
    assert res["corrective"].shape == (2, V, 3) and res["pose_error"].shape == (2,)
    off = reply("generate", {"n": 2}, StandInPipe(lambda p: hypotheses()))  # off by default
    assert "pose" not in off["result"] and "betas" not in off["result"]


def test_non_finite_pose_is_not_sent():
    def make(plan):
        h = hypotheses()
        h.pose = {"global_orient": torch.zeros(2, 3), "hand_pose": torch.zeros(2, 15, 3),
                  "transl": torch.full((2, 3), float("nan")), "betas": torch.zeros(2, 7),
                  "corrective": torch.zeros(2, V, 3), "fit_error": torch.zeros(2)}
        return h

    r = reply("generate", {"n": 2}, StandInPipe(make))
    assert r["status"] == "error" and "pose.transl" in r["error"]["message"]


def test_finite_results_are_sent():
    r = reply("generate", {"n": 2}, StandInPipe(lambda p: hypotheses()))
    assert r["status"] == "ok" and r["result"]["vertices"].shape == (2, V, 3)


@pytest.mark.parametrize("op,args,result,code,field", [
    # the tuned settings diverged: a server bug
    ("generate", {}, hypotheses(vertex=float("nan")), P.INTERNAL, "vertices"),
    ("refit3d", {"joints": JOINTS}, hypotheses(score=float("-inf")), P.INTERNAL, "scores"),
    # the request pushed the sampler: lowering its strength is the fix
    ("generate", {"autoguidance": 9.0}, hypotheses(vertex=float("nan")), P.BAD_ARGUMENT,
     "vertices"),
    ("refit3d", {"joints": JOINTS, "guidance_strength": 10.0}, hypotheses(score=float("-inf")),
     P.BAD_ARGUMENT, "scores"),
])
def test_non_finite_results_become_error_replies(op, args, result, code, field):
    r = reply(op, args, StandInPipe(lambda p: result))
    assert r["status"] == "error" and r["error"]["code"] == code
    assert f"'{field}'" in r["error"]["message"] and "NaN or infinite" in r["error"]["message"]
    if code == P.BAD_ARGUMENT:
        assert next(k for k in compute.STRENGTH_ARGS if k in args) in r["error"]["message"]


def test_non_finite_reconstruct_result_names_the_hand(monkeypatch):
    def fake_reconstruct(pipe, args, progress, max_pixels=0):
        hand = P.make_hypotheses(np.zeros((1, V, 3)), np.zeros((1, 21, 3)), [0.0])
        bad = dict(hand, vertices=np.full((1, V, 3), np.inf, np.float32))
        return {"hands": [hand, bad], "image_size": [8, 8], "K": np.eye(3, dtype=np.float32)}

    monkeypatch.setattr(compute, "reconstruct_request", fake_reconstruct)
    r = reply("reconstruct", {"rgb": np.zeros((8, 8, 3), np.uint8)}, StandInPipe(None))
    assert r["status"] == "error" and r["error"]["code"] == P.INTERNAL
    assert "'hands[1].vertices'" in r["error"]["message"]


def test_image_decode_failures_are_not_internal():
    """Images that pass the protocol's header scan but not the decoder: TOO_LARGE when PIL
    reads a larger size than the scan did, BAD_ARGUMENT when the pixel data is broken."""
    from crafted_images import grey_jpeg, hidden_frame_jpeg

    hidden = hidden_frame_jpeg(6000, 6000)
    assert P.image_size(hidden) == (16, 16)  # what the scan sees
    for image, code in [(hidden, P.TOO_LARGE), (grey_jpeg(640, 640)[:-400], P.BAD_ARGUMENT)]:
        r = reply("reconstruct", {"image": image}, StandInPipe(None))
        assert r["status"] == "error" and r["error"]["code"] == code, r


class FlakyPipe(StandInPipe):
    """Its first `run` fails with a bug (not a ValueError); later runs work."""

    def __init__(self):
        super().__init__(lambda p: hypotheses())
        self.runs = 0

    def run(self, plans, progress=None):
        self.runs += 1
        if self.runs == 1:
            raise RuntimeError("a bug in the sampler")
        return super().run(plans, progress)


def test_a_failing_batch_is_answered_internal_and_the_thread_serves_on():
    """A bug in a batch ends its requests with INTERNAL; the compute loop serves on."""
    import zmq

    ctx = zmq.Context()
    results = ctx.socket(zmq.PULL)
    results.bind("inproc://test-results")
    stop = threading.Event()
    worker = compute.ComputeLoop(stop)
    worker.start(FlakyPipe(), ctx, "inproc://test-results")
    try:
        finals = []
        for rid in ("first", "second"):
            req = P.validate_request(P.make_request("generate", {"n": 2}, id=rid))
            worker.submit(compute.QueuedRequest([b"peer"], req, b"owner"))
            while True:
                assert results.poll(10_000), "no reply from the compute loop"
                msg = P.parse_reply(P.unpack(results.recv_multipart()[-1], 1 << 30))
                if msg.status != "progress":
                    finals.append(msg)
                    break
        assert [(m.id, m.status) for m in finals] == [("first", "error"), ("second", "ok")]
        assert finals[0].code == P.INTERNAL and worker.thread.is_alive()
    finally:
        stop.set()
        worker.join(5)
        results.close()
        ctx.term()


def test_a_failing_plan_is_answered_internal():
    class BadPlan(StandInPipe):
        def plan(self, task, options):
            raise KeyError("a bug in planning")

    r = reply("generate", {"n": 2}, BadPlan(lambda p: hypotheses()))
    assert r["status"] == "error" and r["error"]["code"] == P.INTERNAL


def test_the_server_computes_on_the_thread_that_calls_serve_forever():
    """`Server.serve_forever` runs the compute loop on its caller's thread (the process's main
    thread in `hhmr serve`: torch's OpenMP pool runs about half as fast from another) and the
    socket loop on a thread of its own; both end when `stop` is set."""
    from types import SimpleNamespace

    from hhmr.client import HHMRClient
    from hhmr.evaluation.service import free_port
    from hhmr.server import Server

    ran_on = []

    def make(plan):
        ran_on.append(threading.current_thread())
        return hypotheses()

    address = f"tcp://127.0.0.1:{free_port()}"
    server = Server(address)
    server.open()
    server.pipe, server.device = StandInPipe(make), "cpu"
    server.pipe.hand = SimpleNamespace(num_vertices=V)
    got = []

    def client():
        try:
            got.append(HHMRClient(address, timeout_s=10, retries=0).call("generate", n=2))
        finally:
            server.stop.set()

    asker = threading.Thread(target=client)
    asker.start()
    server.serve_forever()  # returns once the client has its reply
    asker.join(10)
    assert ran_on == [threading.current_thread()]
    assert len(got) == 1 and got[0]["vertices"].shape == (2, V, 3)
    assert not any(t.name == "hhmr-sockets" for t in threading.enumerate())


def test_a_stop_mid_request_ends_it_as_shutting_down():
    """A signal reaches the compute loop (the main thread) before the socket thread cancels
    anything: the running request still ends CANCELLED "the server is shutting down"."""
    stop = threading.Event()

    class StoppedMidway(StandInPipe):
        def run(self, plans, progress=None):
            progress(0, 2)
            stop.set()  # SIGTERM's handler
            progress(1, 2)
            return [hypotheses() for _ in plans]

    worker = compute.ComputeLoop(stop)
    worker.pipe = StoppedMidway(None)
    item = compute.QueuedRequest([b"peer"], P.validate_request(P.make_request("generate", {})))
    [r] = worker._run_batch([item], Sink())
    assert r["status"] == "error" and r["error"]["code"] == P.CANCELLED
    assert "shutting down" in r["error"]["message"]


def test_a_failing_socket_loop_stops_the_server_with_an_error():
    """A bug that ends the socket loop stops the compute loop too (no server left running
    deaf) and `serve_forever` raises, so `hhmr serve` exits non-zero."""
    from types import SimpleNamespace

    from hhmr.evaluation.service import free_port
    from hhmr.server import Server, ServerFailed

    server = Server(f"tcp://127.0.0.1:{free_port()}")
    server.open()
    server.pipe, server.device = StandInPipe(None), "cpu"
    server.pipe.hand = SimpleNamespace(num_vertices=V)
    beat, calls = server._beat, []

    def failing_beat():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the socket loop")
        beat()

    server._beat = failing_beat
    with pytest.raises(ServerFailed, match="internal error"):
        server.serve_forever()
    assert server.compute.finished.is_set() and server.ctx.closed
