"""End-to-end: a real `hhmr serve` process on loopback, called the way clients call it."""

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from backend_process import broker_state, free_port, start_server
from hhmr import protocol as P
from hhmr.client import HHMRClient, RemoteError
from hhmr.paths import weights_dir
from hhmr.sampling import SamplingConfig

WEIGHTS = weights_dir() / "hhmr_prior.pt"
pytestmark = pytest.mark.skipif(not WEIGHTS.exists(), reason="no trained weights")


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = start_server(port)
    yield port, proc
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    out = open(proc.log_path).read()
    assert proc.returncode == 0, out
    assert "stopped after" in out


@pytest.fixture
def client(server):
    return HHMRClient(f"tcp://127.0.0.1:{server[0]}", timeout_s=30, retries=0)


def test_info_describes_the_hand(client):
    info = client.info()
    topo = info["topology"]
    assert topo["num_vertices"] == 803 and topo["faces"].shape[1] == 3
    assert topo["skin_weights"].shape == (803, 16) and len(topo["keypoint_names"]) == 21
    assert info["protocol"] == P.PROTOCOL_VERSION and "fit2d" in info["ops"]
    assert info["autoguidance"] == SamplingConfig().generate.autoguidance.weight  # shipped guide


def test_every_sampling_request(client):
    info = client.info()
    tmpl = info["topology"]["template"]
    h = client.hypotheses("generate", n=2, steps=2, seed=1)
    assert h.vertices.shape == (2, 803, 3) and h.vertices.dtype == np.float32
    alone = client.hypotheses("generate", n=2, steps=2, seed=1, autoguidance=1.0)
    assert not np.allclose(alone.vertices, h.vertices, atol=1e-4)  # the shipped guide acts
    keep = np.ones(803, bool)
    keep[:200] = False
    h = client.hypotheses("inpaint", vertices=tmpl, keep=keep, n=2, steps=2)
    assert np.allclose(h.vertices[:, keep], tmpl[keep], atol=1e-4)
    joints = info["topology"]["keypoint_regressor"] @ tmpl
    h = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2)
    assert h.joints.shape == (3, 21, 3) and len(h.scores) == 3
    assert h.extra["central"].tolist() == [True, False, False]  # hypothesis 0, noise's mean
    h_xt = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2,
                             guidance_space="x_t")  # HHMR's space, not the server's default
    assert not np.allclose(h_xt.vertices, h.vertices)
    # a relative strength: 1 is the tuned scale, 0 none
    same = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2,
                             guidance_strength=1.0)
    assert np.allclose(same.vertices, h.vertices)
    off = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2,
                            guidance_strength=0.0)
    plain = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2,
                              guidance_scale=0.0)
    assert np.allclose(off.vertices, plain.vertices)
    legacy = client.hypotheses("refit3d", joints=joints.astype(np.float32), n=3, steps=2,
                               guidance=0.0)  # the deprecated alias of older add-ons
    assert np.allclose(legacy.vertices, plain.vertices)
    assert not np.allclose(off.vertices, h.vertices)
    with pytest.raises(RemoteError, match="not both") as err:
        client.hypotheses("refit3d", joints=joints.astype(np.float32), n=1, steps=2,
                          guidance_scale=0.1, guidance_strength=1.0)
    assert err.value.code == P.BAD_ARGUMENT
    K = np.array([[500, 0, 112], [0, 500, 112], [0, 0, 1]], np.float32)
    p = (joints + [0, 0, 0.5]) @ K.T
    kp = (p[:, :2] / p[:, 2:]).astype(np.float32)
    h = client.hypotheses("fit2d", keypoints=kp, K=K, n=2, steps=2)
    assert h.vertices.shape == (2, 803, 3) and "transl" in h.extra
    # the same hand's 3D joints as a second condition: the distance to them comes back too
    h = client.hypotheses("fit2d", keypoints=kp, K=K, joints3d=(joints + 0.3).astype(
        np.float32), joints3d_confidence=np.full(21, 0.5, np.float32), n=2, steps=2)
    assert h.extra["joints3d_mm"].shape == (2,) and h.extra["reprojection_px"].shape == (2,)
    for bad in ({"joints3d": np.zeros((20, 3), np.float32)},
                {"joints3d_confidence": np.ones(21, np.float32)}):
        with pytest.raises(RemoteError, match="joints3d") as err:
            client.hypotheses("fit2d", keypoints=kp, **bad)
        assert err.value.code == P.BAD_ARGUMENT
    with pytest.raises(RemoteError, match="mode") as err:
        client.call("reconstruct", rgb=np.zeros((8, 8, 3), np.uint8), mode="depth")
    assert err.value.code == P.BAD_ARGUMENT
    with pytest.raises(RemoteError, match="box") as err:
        client.call("reconstruct", rgb=np.zeros((8, 8, 3), np.uint8),
                    box=np.array([5, 5, 2, 8], np.float32))
    assert err.value.code == P.BAD_ARGUMENT


def test_progress_and_cancel(server):
    c = HHMRClient(f"tcp://127.0.0.1:{server[0]}", timeout_s=30, retries=0)
    job = c.submit("generate", n=1, steps=200)
    while not job.progress:
        assert job.poll() is None
        time.sleep(0.01)
    c.cancel(job.id)
    with pytest.raises(RemoteError) as err:
        job.wait(30)
    assert err.value.code == P.CANCELLED


def test_bad_requests_get_clear_errors(client):
    with pytest.raises(RemoteError) as err:
        client.call("refit3d", joints=np.full((21, 3), np.nan, np.float32))
    assert err.value.code == P.BAD_ARGUMENT and "NaN" in err.value.message
    with pytest.raises(RemoteError) as err:
        client.call("generate", n=10_000)
    assert err.value.code == P.BAD_ARGUMENT
    with pytest.raises(RemoteError) as err:
        client.call("inpaint", vertices=np.zeros((10, 3), np.float32), keep=np.ones(10, bool))
    assert err.value.code == P.BAD_ARGUMENT and "803" in err.value.message


def test_out_of_range_numbers_are_refused(client):
    """Values that overflowed the sampler into NaN vertices or -inf scores are refused up
    front with their documented range."""
    for op, args, names in [
            ("generate", {"guidance": 1e308}, "between 0 and 1"),
            ("generate", {"autoguidance": 1e308}, "between 0 and 10"),
            ("refit3d", {"joints": np.full((21, 3), 1e30, np.float32)}, "[-10, 10]")]:
        with pytest.raises(RemoteError) as err:
            client.call(op, n=1, steps=2, **args)
        assert err.value.code == P.BAD_ARGUMENT and names in err.value.message


def test_image_limit_applies_to_the_decoded_size(client):
    """15000x15000 JPEGs of under 1 MB whose first frame header says 16x16: one with the
    real header after it, one with it behind a junk byte that the protocol's header scan
    stops at (PIL skips it). Both TOO_LARGE, quickly, never decoded; broken pixel data is a
    BAD_ARGUMENT; neither is INTERNAL (PIL's DecompressionBombError was)."""
    from crafted_images import grey_jpeg, hidden_frame_jpeg

    for image in (grey_jpeg(15000, 15000, fake_first=(16, 16)),
                  hidden_frame_jpeg(15000, 15000)):
        assert len(image) < 1 << 20
        t0 = time.perf_counter()
        with pytest.raises(RemoteError) as err:
            client.call("reconstruct", image=image, n=1, steps=2)
        assert err.value.code == P.TOO_LARGE and "pixels" in err.value.message
        assert time.perf_counter() - t0 < 5.0  # a decode of 225 Mpx alone takes longer
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct", image=grey_jpeg(640, 640)[:-400], n=1, steps=2)
    assert err.value.code == P.BAD_ARGUMENT
    assert client.call("status")["running"] == []  # and the server goes on


def _raw(port: int, payload: bytes, timeout_ms: int = 5000) -> dict | None:
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(f"tcp://127.0.0.1:{port}")
    s.send(payload)
    reply = None
    deadline = time.time() + timeout_ms / 1000
    while time.time() < deadline and s.poll(max(1, int((deadline - time.time()) * 1000))):
        reply = P.unpack(s.recv())
        if reply.get("status") != "progress":  # the final reply
            break
    s.close()
    return reply


def test_oversize_payload_is_refused(server):
    limit = P.Limits().max_message_bytes
    over = P.pack(P.make_request("inpaint", {"vertices": np.zeros((803, 3), np.float32),
                                             "keep": np.ones(803, bool)})) + b"\0" * limit
    out = _raw(server[0], over, 30_000)
    assert out["status"] == "error" and out["error"]["code"] == P.TOO_LARGE
    huge = b"\0" * (2 * limit + 1)
    assert _raw(server[0], huge, 2000) is None  # dropped by ZeroMQ's MAXMSGSIZE
    out = _raw(server[0], P.pack(P.make_request("status")))
    assert out["status"] == "ok"


def test_load_many_clients(server):
    """8 clients x 50 requests: every reply arrives, each to the client that asked. A seed
    repeats its hand whichever requests the server batched it with, up to float rounding
    (batches of different sizes take different CPU kernels: about 3e-8 m apart)."""
    port = server[0]
    errors: list[str] = []

    def worker(k: int) -> None:
        c = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=60, retries=0)
        for i in range(50):
            seed = k * 1000 + i
            h = c.hypotheses("generate", n=1, steps=1, seed=seed)
            if h.vertices.shape != (1, 803, 3):
                errors.append(f"client {k} request {i}: shape {h.vertices.shape}")
            again = c.hypotheses("generate", n=1, steps=1, seed=seed) if i == 0 else h
            if not np.allclose(again.vertices, h.vertices, rtol=0, atol=1e-6):
                errors.append(f"client {k}: seed {seed} not reproducible")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors


def test_port_in_use_fails_clearly(server):
    exe = shutil.which("hhmr")
    r = subprocess.run([exe, "serve", "--bind", f"tcp://127.0.0.1:{server[0]}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "already in use" in r.stderr


def test_non_loopback_bind_needs_keys():
    exe = shutil.which("hhmr")
    r = subprocess.run([exe, "serve", "--bind", "tcp://0.0.0.0:5999"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "CurveZMQ" in r.stderr


def test_killed_server_gives_a_timeout_not_a_hang():
    port = free_port()
    proc = start_server(port)
    c = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=1.5, retries=1)
    job = c.submit("generate", n=1, steps=200)
    while not job.progress:
        job.poll()
        time.sleep(0.01)
    proc.kill()
    proc.wait(10)
    t0 = time.time()
    with pytest.raises(TimeoutError):
        job.wait(30)
    assert time.time() - t0 < 10



def test_broker_socket_needs_no_server():
    """The broker's client-facing ROUTER comes from hhmr.server.sockets, which the server
    shares: no Server, no model."""
    import hhmr.server.broker as broker
    from hhmr.server import bind_router, check_bind

    assert not hasattr(broker, "Server")
    ctx = zmq.Context()
    address = f"tcp://127.0.0.1:{free_port()}"
    front = bind_router(ctx, address, 1000)
    peer = ctx.socket(zmq.DEALER)
    try:
        assert front.type == zmq.ROUTER and front.getsockopt(zmq.MAXMSGSIZE) == 2000
        with pytest.raises(OSError, match="already in use"):
            bind_router(ctx, address, 1000)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(address)
        peer.send(b"hello")
        assert front.poll(5000)
        assert front.recv_multipart()[-1] == b"hello"
    finally:
        peer.close()
        front.close()
        ctx.term()
    with pytest.raises(ValueError, match="CurveZMQ"):
        check_bind("tcp://0.0.0.0:5999", None)


def test_broker_with_workers_serves_concurrent_clients():
    port = free_port()
    exe = shutil.which("hhmr")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([exe, "serve", "--bind", f"tcp://127.0.0.1:{port}", "--workers",
                             "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    try:
        broker_state(port, lambda s: s["workers"] == 2)  # BUSY until the workers are ready
        results, errors = [], []

        def call(k: int) -> None:
            try:
                c = HHMRClient(f"tcp://127.0.0.1:{port}", timeout_s=60, retries=0)
                results.append(c.hypotheses("generate", n=1, steps=2, seed=k).vertices.shape)
            except Exception as err:  # noqa: BLE001 - collected and reported below
                errors.append(repr(err))

        threads = [threading.Thread(target=call, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors and results == [(1, 803, 3)] * 8
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "2 workers" in out and "broker stopped" in out
    assert out.count("stopped after") >= 1  # a worker served and stopped cleanly


def test_reconstruct_request_on_a_real_photo(client):
    pytest.importorskip("mediapipe")
    from pathlib import Path

    photo = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_photos" / \
        "freihand_style" / "119.jpg"
    if not photo.exists():
        pytest.skip("no ../shared/data")
    result = client.call("reconstruct", image=photo.read_bytes(), n=2)
    assert result["hands"] and result["image_size"] == [224, 224]
    hand = P.parse_hypotheses(result["hands"][0])
    assert hand.vertices.shape == (2, 803, 3)
    assert result["hands"][0]["handedness"] in ("left", "right")


CLIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "real_videos" / \
    "hand_open_close.mp4"


@pytest.mark.skipif(not CLIP.exists(), reason="no ../shared/data")
def test_reconstruct_video_request_streams_progress_and_returns_the_animation(server):
    pytest.importorskip("mediapipe")
    c = HHMRClient(f"tcp://127.0.0.1:{server[0]}", timeout_s=60, retries=0)
    job = c.submit("reconstruct_video", video=CLIP.read_bytes(), end=16, stride=2)
    result = job.wait(300)
    assert len(job.progress) >= 8  # a word per frame tracked and per frame fitted
    assert [f for f, _ in job.progress] == sorted(f for f, _ in job.progress)
    assert result["frames"].tolist() == list(range(0, 16, 2)) and result["detected"].all()
    assert result["hand_pose"].shape == (8, 15, 3) and result["joints"].shape == (8, 21, 3)
    assert result["global_orient"].shape == (8, 3) and result["betas"].ndim == 1
    assert result["image_size"] == [1280, 720] and result["fps"] == pytest.approx(15, 0.05)
    assert result["handedness"] in ("left", "right")
    assert result["stage_ms"]["detect_ms"] > 0 and result["stage_ms"]["sample_ms"] > 0


@pytest.mark.skipif(not CLIP.exists(), reason="no ../shared/data")
def test_reconstruct_video_takes_an_image_sequence(client):
    pytest.importorskip("mediapipe")
    import cv2

    cap = cv2.VideoCapture(str(CLIP))
    frames = []
    for _ in range(6):
        ok, bgr = cap.read()
        frames.append(cv2.imencode(".jpg", bgr[::2, ::2])[1].tobytes())
    cap.release()
    result = client.call("reconstruct_video", frames=frames, fps=10.0, stride=2)
    assert result["frames"].tolist() == [0, 2, 4] and result["fps"] == pytest.approx(5.0)
    assert result["image_size"] == [640, 360] and result["detected"].all()
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct_video", frames=frames, video=b"x")
    assert err.value.code == P.BAD_ARGUMENT and "exactly one" in err.value.message
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct_video", frames=[b"not an image"])
    assert err.value.code == P.BAD_ARGUMENT


def test_reconstruct_video_refuses_what_is_not_a_clip(client):
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct_video", video=b"\x00\x01 not a video" * 64)
    assert err.value.code == P.BAD_ARGUMENT and "as a video" in err.value.message
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct_video", video=b"x", start=5, end=5)
    assert err.value.code == P.BAD_ARGUMENT and "'end'" in err.value.message
    with pytest.raises(RemoteError) as err:
        client.call("reconstruct_video", video="a path, not bytes")
    assert err.value.code == P.BAD_ARGUMENT
    assert client.call("info")["model"]  # still serving
