"""The wire protocol (hhmr.protocol) and the pure-Python client (hhmr.client); no torch."""

from __future__ import annotations

import io
import random
import threading
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hhmr import protocol as P
from hhmr.client import HHMRClient, RemoteError

V = 50  # vertex count of the toy "server" in these tests


def req(op: str, id: str = "r1", **args: Any) -> dict[str, Any]:
    return {"v": 1, "id": id, "op": op, "args": args}


def nd(dtype: str, shape: list[int], data: bytes, **extra: Any) -> dict[str, Any]:
    return {"__nd__": True, "dtype": dtype, "shape": shape, "data": data, **extra}


def roundtrip(msg: Any, limits: P.Limits | None = None, **kw: Any) -> P.Request:
    return P.validate_request(P.unpack(P.pack(msg)), limits, **kw)


def code_of(fn, *a: Any, **kw: Any) -> str:
    with pytest.raises(P.ProtocolError) as info:
        fn(*a, **kw)
    assert info.value.message
    return info.value.code


def rejects(msg: Any, limits: P.Limits | None = None, **kw: Any) -> str:
    return code_of(roundtrip, msg, limits, **kw)


def joints() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(21, 3)).astype(np.float32)


# ---------------------------------------------------------------------------- arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64, np.uint8, bool])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (2, 3, 4)])
def test_array_roundtrip(dtype, shape):
    a = (np.arange(int(np.prod(shape))) % 3).reshape(shape).astype(dtype)
    b = P.unpack(P.pack({"a": a}))["a"]
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    assert b.flags.writeable


def test_array_roundtrip_noncontiguous_bigendian_and_scalars():
    a = np.arange(24, dtype=">f8").reshape(4, 6)[:, ::2]
    b = P.unpack(P.pack(a))
    assert b.dtype == np.float64 and np.array_equal(a, b)
    assert P.unpack(P.pack([np.float32(1.5), np.int64(3), np.bool_(True)])) == [1.5, 3, True]
    assert P.encode_array(np.zeros(2, np.float32))["dtype"] == "<f4"


@pytest.mark.parametrize("dtype", [object, np.complex64, np.float16, "U3"])
def test_pack_refuses_other_dtypes(dtype):
    assert code_of(P.pack, np.zeros(2, dtype=dtype)) == P.BAD_ARGUMENT


@pytest.mark.parametrize("m", [
    nd("|O", [1], b"\0" * 8),
    nd("<c8", [1], b"\0" * 8),
    nd(">f4", [1], b"\0" * 4),
    nd("<f2", [1], b"\0" * 2),
    nd("float16", [1], b"\0" * 2),
    nd(4, [1], b"\0" * 4),
    nd("<f4", [3], b"\0" * 8),  # data length does not match the shape
    nd("<f4", [2, 2], b"\0" * 12),
    nd("<f4", [-1], b""),
    nd("<f4", [True], b"\0" * 4),
    nd("<f4", "1", b"\0" * 4),
    nd("<f4", [1] * 9, b"\0" * 4),
    nd("<f4", [0, 2**62], b""),
    nd("<f4", [0, 2**64 - 1], b""),
    nd("<f4", [0] + [2**20] * 7, b""),
    nd("<f4", [1], "abcd"),
    nd("|b1", [2], b"\0\2"),
    nd("<f4", [1], b"\0" * 4, extra=1),
    {"__nd__": True, "dtype": "<f4", "shape": [1]},
    {"__nd__": 1, "dtype": "<f4", "shape": [1], "data": b"\0" * 4},
])
def test_bad_array_encodings(m):
    assert code_of(P.unpack, msgpack.packb({"a": m}, use_bin_type=True)) == P.BAD_MESSAGE


# ---------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa2\xff\xfe", b"\x91" * 5000,
    msgpack.packb({1: 2}), msgpack.packb(msgpack.ExtType(5, b"ab")),
])
def test_bad_msgpack_bytes(data):
    assert code_of(P.unpack, data) == P.BAD_MESSAGE


def test_unpack_size_limits():
    assert code_of(P.unpack, "not bytes") == P.BAD_MESSAGE
    big = P.pack(req("info", pad=b"x" * 2000))
    assert code_of(P.unpack, big, max_bytes=1000) == P.TOO_LARGE
    assert code_of(P.unpack, msgpack.packb(list(range(20_001)))) == P.TOO_LARGE
    many = {str(i): i for i in range(20_001)}
    assert code_of(P.unpack, msgpack.packb(many)) == P.TOO_LARGE
    assert code_of(P.unpack, msgpack.packb([1] * 11), max_container_len=10) == P.TOO_LARGE
    assert code_of(P.unpack, msgpack.packb("x" * 11), max_str_len=10) == P.TOO_LARGE
    blob = msgpack.packb(b"x" * 600, use_bin_type=True)
    assert code_of(P.unpack, blob + b"\0" * 10, max_bytes=605) == P.TOO_LARGE
    limits = P.Limits(max_message_bytes=100)
    assert code_of(P.decode_request, big, limits) == P.TOO_LARGE


def test_decode_request_keeps_id_when_possible():
    bad_array = req("refit3d", id="abc", joints=nd("<c8", [21, 3], b"\0" * 504))
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(msgpack.packb(bad_array, use_bin_type=True))
    assert info.value.code == P.BAD_MESSAGE and info.value.request_id == "abc"
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(P.pack(req("refit3d", id="xyz")))
    assert info.value.code == P.BAD_ARGUMENT and info.value.request_id == "xyz"
    assert P.decode_request(P.pack(req("info", id="q"))).id == "q"


# ---------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("msg", [[1, 2], "info", None, 3, b"x"])
def test_non_map_messages(msg):
    assert rejects(msg) == P.BAD_MESSAGE


@pytest.mark.parametrize("v", [None, 0, 2, "1", True, 1.0])
def test_wrong_or_missing_version(v):
    msg = req("info")
    if v is None:
        del msg["v"]
    else:
        msg["v"] = v
    assert rejects(msg) == P.UNSUPPORTED_VERSION


def test_envelope_errors():
    assert rejects(req("dance")) == P.UNKNOWN_OP
    assert rejects({**req("info"), "op": 3}) == P.BAD_MESSAGE
    assert rejects({**req("info"), "extra": 1}) == P.BAD_MESSAGE
    for bad_id in ["", "x" * 65, 7, None, b"id"]:
        assert rejects({**req("info"), "id": bad_id}) == P.BAD_MESSAGE
    assert rejects({**req("info"), "args": [1]}) == P.BAD_ARGUMENT
    assert rejects(req("info", x=1)) == P.BAD_ARGUMENT
    assert rejects(req("generate", nn=1)) == P.BAD_ARGUMENT
    assert roundtrip({"v": 1, "id": "x" * 64, "op": "status"}).args == {}


# ---------------------------------------------------------------------------- ops


def test_valid_requests_and_defaults():
    r = roundtrip(req("generate"))
    assert r == P.Request("r1", "generate", {"autoguidance": None, "n": 4, "steps": 10,
                                             "guidance_scale": None, "guidance_strength": None,
                                             "guidance_space": None, "seed": 0,
                                             "central_first": None, "deadline_s": None,
                                             "pose": False})
    assert roundtrip(req("generate"), P.Limits(max_n=2)).args["n"] == 2
    r = roundtrip(req("generate", n=64, steps=200, guidance_scale=1, guidance_space="x0",
                      seed=2**63 - 1, central_first=True, autoguidance=1, deadline_s=2,
                      pose=False))
    assert r.args == {"n": 64, "steps": 200, "guidance_scale": 1.0, "guidance_strength": None,
                      "guidance_space": "x0", "seed": 2**63 - 1, "central_first": True,
                      "autoguidance": 1.0, "deadline_s": 2.0, "pose": False}
    for bad in (0, -1, 1e9, "soon", float("nan")):
        assert rejects(req("generate", deadline_s=bad)) == P.BAD_ARGUMENT
    assert rejects(req("refit3d", joints=joints(), autoguidance=2)) == P.BAD_ARGUMENT
    verts = np.zeros((V, 3), np.float64)
    r = roundtrip(req("inpaint", vertices=verts, keep=np.ones(V, np.uint8)), num_vertices=V)
    assert r.args["vertices"].dtype == np.float32 and r.args["keep"].dtype == bool
    r = roundtrip(req("inpaint", vertices=verts, keep=np.ones(V, bool)))  # any V, consistent
    assert r.args["keep"].all()
    r = roundtrip(req("refit3d", joints=joints(), joint_mask=np.ones(21, bool)))
    assert r.args["joints"].shape == (21, 3)
    K = np.array([[500, 0, 320], [0, 500, 240], [0, 0, 1]], np.float64)
    r = roundtrip(req("fit2d", keypoints=np.ones((21, 2), np.int32), confidence=np.ones(21), K=K))
    assert r.args["keypoints"].dtype == np.float32 and r.args["K"].dtype == np.float32
    rgb = np.zeros((8, 6, 3), np.uint8)
    r = roundtrip(req("reconstruct", rgb=rgb, handedness="left", K=K))
    assert r.args["image"] is None and r.args["rgb"].shape == (8, 6, 3)
    assert roundtrip(req("cancel", target="r0")).args == {"target": "r0"}


def test_guidance_is_a_deprecated_alias_of_guidance_scale():
    """Older clients send the raw scale as 'guidance': it arrives as 'guidance_scale'."""
    for op, extra in [("generate", {}), ("refit3d", {"joints": joints()})]:
        r = roundtrip(req(op, guidance=0.5, **extra))
        assert r.args["guidance_scale"] == 0.5 and "guidance" not in r.args
    assert roundtrip(req("generate", guidance=None, guidance_scale=0.5)).args[
        "guidance_scale"] == 0.5  # a nil argument counts as absent
    assert rejects(req("generate", guidance=0.5, guidance_scale=0.5)) == P.BAD_ARGUMENT
    with pytest.raises(P.ProtocolError, match="deprecated alias 'guidance', not both"):
        P.validate_request(req("refit3d", joints=joints(), guidance=1, guidance_scale=2))
    assert rejects(req("info", guidance=0.5)) == P.BAD_ARGUMENT  # only where the op takes it


def _image_bytes(fmt: str, w: int, h: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_bytes(fmt):
    data = _image_bytes(fmt, 7, 5)
    assert P.image_size(data) == (7, 5)
    assert roundtrip(req("reconstruct", image=data)).args["image"] == data
    assert rejects(req("reconstruct", image=data), P.Limits(max_pixels=34)) == P.TOO_LARGE
    assert rejects(req("reconstruct", image=data[:3])) == P.BAD_ARGUMENT


def test_image_pixel_limits():
    png = _image_bytes("PNG", 4, 4)
    huge = png[:16] + (100_000).to_bytes(4, "big") * 2 + png[24:]  # a header that lies
    assert rejects(req("reconstruct", image=huge)) == P.TOO_LARGE
    rgb = np.zeros((10, 10, 3), np.uint8)
    assert rejects(req("reconstruct", rgb=rgb), P.Limits(max_pixels=99)) == P.TOO_LARGE
    assert rejects(req("reconstruct", image=b"GIF89a....")) == P.BAD_ARGUMENT
    # a small frame header before the real one: the largest counts, not the first
    from crafted_images import grey_jpeg

    fake = grey_jpeg(5000, 5000, fake_first=(16, 16))
    assert P.image_size(fake) == (5000, 5000)
    assert P.image_size(grey_jpeg(5000, 5000)) == (5000, 5000)
    assert P.image_size(grey_jpeg(64, 48, fake_first=(16, 16))) == (64, 48)
    assert rejects(req("reconstruct", image=fake)) == P.TOO_LARGE
    assert rejects(req("reconstruct", image=png, rgb=rgb)) == P.BAD_ARGUMENT
    assert rejects(req("reconstruct")) == P.BAD_ARGUMENT


@pytest.mark.parametrize("args", [
    {"n": 0}, {"n": 65}, {"steps": 0}, {"steps": 201}, {"seed": -1},
    {"n": "4"}, {"n": 4.0}, {"n": True}, {"steps": [10]},
    {"guidance_scale": -0.1}, {"guidance_scale": float("nan")},
    {"guidance_scale": float("inf")}, {"guidance_scale": "high"}, {"guidance_scale": True},
    {"guidance": -0.1}, {"guidance": "high"}, {"guidance": 0.1, "guidance_scale": 0.1},
    {"guidance_strength": -1}, {"guidance_strength": float("nan")},
    {"guidance_space": "eps"}, {"guidance_space": 0}, {"guidance_space": "X0"},
    {"central_first": 1}, {"central_first": "yes"}, {"pose": 1}, {"pose": "yes"},
    {"autoguidance": -1}, {"autoguidance": float("nan")}, {"autoguidance": "more"},
    # above the documented maxima
    {"guidance_scale": 1.01}, {"guidance": 1e308}, {"guidance_strength": 10.5},
    {"autoguidance": 10.5}, {"autoguidance": 1e308},
])
def test_sampling_options_rejected(args):
    assert rejects(req("generate", **args)) == P.BAD_ARGUMENT


def test_sampling_options_at_their_maxima():
    r = roundtrip(req("generate", guidance_scale=P.MAX_GUIDANCE_SCALE, autoguidance=10))
    assert r.args["guidance_scale"] == 1.0 and r.args["autoguidance"] == 10.0
    r = roundtrip(req("refit3d", joints=np.full((21, 3), -10.0), guidance_strength=10))
    assert r.args["guidance_strength"] == 10.0 and r.args["joints"].min() == -10.0
    r = roundtrip(req("fit2d", keypoints=np.full((21, 2), 1e6), K=_with(K_OK, (0, 0), 1e6)))
    assert r.args["keypoints"].max() == 1e6


def test_sampling_limits_are_configurable():
    limits = P.Limits(max_n=8, max_steps=20)
    assert rejects(req("generate", n=9), limits) == P.BAD_ARGUMENT
    assert rejects(req("generate", steps=21), limits) == P.BAD_ARGUMENT
    assert roundtrip(req("generate", n=8, steps=20), limits).args["n"] == 8


def _with(a: np.ndarray, idx: tuple, value: float) -> np.ndarray:
    a = a.copy()
    a[idx] = value
    return a


K_OK = np.array([[500, 0, 320], [0, 500, 240], [0, 0, 1]], np.float32)
KP = np.ones((21, 2), np.float32)


@pytest.mark.parametrize("msg,num_vertices", [
    (req("refit3d"), None),  # missing required
    (req("refit3d", joints=joints()[:20]), None),
    (req("refit3d", joints=joints().T), None),
    (req("refit3d", joints=joints().ravel()), None),
    (req("refit3d", joints=joints().tolist()), None),  # lists are not arrays
    (req("refit3d", joints=joints() > 0), None),
    (req("refit3d", joints=_with(joints(), (3, 1), np.nan)), None),
    (req("refit3d", joints=_with(joints(), (0, 0), np.inf)), None),
    (req("refit3d", joints=np.full((21, 3), 1e300)), None),  # overflows float32
    (req("refit3d", joints=np.full((21, 3), 1e30)), None),  # beyond |x| <= 10 metres
    (req("refit3d", joints=_with(joints(), (4, 2), -10.5)), None),
    (req("inpaint", vertices=np.full((V, 3), 11.0), keep=np.ones(V, bool)), None),
    (req("fit2d", keypoints=np.full((21, 2), 1e30, np.float32)), None),  # |x| <= 1e6 px
    (req("fit2d", keypoints=KP, K=_with(K_OK, (0, 0), 1e30)), None),
    (req("fit2d", keypoints=KP, K=_with(K_OK, (0, 2), -2e6)), None),
    (req("refit3d", joints=joints(), joint_mask=np.ones(20, bool)), None),
    (req("refit3d", joints=joints(), joint_mask=np.full(21, 2, np.uint8)), None),
    (req("refit3d", joints=joints(), joint_mask=np.ones(21, np.float32)), None),
    (req("fit2d", keypoints=np.ones((21, 3), np.float32)), None),
    (req("fit2d", keypoints=KP, confidence=np.full(21, 1.5)), None),
    (req("fit2d", keypoints=KP, confidence=np.full(21, -0.1)), None),
    (req("fit2d", keypoints=KP, K=K_OK[:2]), None),
    (req("fit2d", keypoints=KP, K=_with(K_OK, (0, 0), -1)), None),
    (req("fit2d", keypoints=KP, K=_with(K_OK, (2, 0), 3)), None),
    (req("fit2d", keypoints=KP, K=_with(K_OK, (1, 2), np.nan)), None),
    (req("inpaint", vertices=np.zeros((V, 3)), keep=np.ones(V, bool)), V + 1),
    (req("inpaint", vertices=np.zeros((V, 3)), keep=np.ones(V - 1, bool)), None),
    (req("inpaint", vertices=np.zeros((0, 3)), keep=np.ones(0, bool)), None),
    (req("inpaint", vertices=np.zeros((V, 3)), keep=np.ones(V, np.int32)), None),
    (req("inpaint", vertices=np.zeros((V, 3)), keep=True), None),
    (req("reconstruct", rgb=np.zeros((8, 8, 4), np.uint8)), None),
    (req("reconstruct", rgb=np.zeros((8, 8, 3), np.float32)), None),
    (req("reconstruct", rgb=np.zeros((0, 8, 3), np.uint8)), None),
    (req("reconstruct", rgb=np.zeros((8, 8, 3), np.uint8), handedness="both"), None),
    (req("reconstruct", image="file.png"), None),
    (req("cancel"), None),
    (req("cancel", target=""), None),
    (req("cancel", target=5), None),
])
def test_bad_arguments(msg, num_vertices):
    assert rejects(msg, num_vertices=num_vertices) == P.BAD_ARGUMENT


# ---------------------------------------------------------------------------- replies


def test_replies_roundtrip():
    hyp = P.make_hypotheses(np.zeros((2, V, 3)), np.zeros((2, 21, 3)), [0.5, 0.25],
                            {"sample": 0.1}, camera=[1, 2])
    r = P.parse_reply(P.unpack(P.pack(P.ok_reply("a", hyp))))
    assert r.status == "ok" and r.id == "a"
    h = P.parse_hypotheses(r.result, num_vertices=V)
    assert len(h) == 2 and h.vertices.shape == (2, V, 3) and h.vertices.dtype == np.float32
    assert h.timings == {"sample": 0.1} and h.extra == {"camera": [1, 2]}
    e = P.parse_reply(P.unpack(P.pack(P.error_reply(None, P.NO_HAND, "no hand found"))))
    assert (e.id, e.status, e.code, e.message) == (None, "error", P.NO_HAND, "no hand found")
    p = P.parse_reply(P.unpack(P.pack(P.progress_reply("a", 1.7, "sampling"))))
    assert (p.status, p.fraction, p.message) == ("progress", 1.0, "sampling")
    assert P.progress_reply("a", float("nan"))["progress"] == 0.0


def test_hypotheses_carry_their_solved_pose():
    n, s = 2, 7
    pose = {"global_orient": np.zeros((n, 3)), "hand_pose": np.zeros((n, 15, 3)),
            "transl": np.zeros((n, 3))}
    hyp = P.make_hypotheses(np.zeros((n, V, 3)), np.zeros((n, 21, 3)), [0.5, 0.25], {},
                            pose=pose, betas=np.zeros((n, s), np.float32),
                            corrective=np.zeros((n, V, 3), np.float32),
                            pose_error=np.zeros(n, np.float32))
    h = P.parse_hypotheses(P.parse_reply(P.unpack(P.pack(P.ok_reply("a", hyp)))).result, V)
    assert set(h.extra) == {"pose", "betas", "corrective", "pose_error"}
    assert h.extra["pose"]["hand_pose"].shape == (n, 15, 3)
    assert h.extra["betas"].shape == (n, s) and h.extra["corrective"].shape == (n, V, 3)
    for op, args in (("generate", {}), ("refit3d", {"joints": joints()})):
        assert roundtrip(req(op, **args)).args["pose"] is False  # off unless asked for
        assert roundtrip(req(op, pose=True, **args)).args["pose"] is True


def test_bad_replies_and_hypotheses():
    for bad in [[], {"v": 1, "id": "a", "status": "maybe"}, {"v": 1, "id": 3, "status": "ok"},
                {"v": 1, "id": "a", "status": "ok", "result": 1},
                {"v": 1, "id": "a", "status": "error", "error": "boom"},
                {"v": 1, "id": "a", "status": "progress", "progress": 2}]:
        assert code_of(P.parse_reply, bad) == P.BAD_MESSAGE
    assert code_of(P.parse_reply, {"v": 2, "id": "a", "status": "ok"}) == P.UNSUPPORTED_VERSION
    good = P.make_hypotheses(np.zeros((2, V, 3)), np.zeros((2, 21, 3)), np.zeros(2))
    for key, value in [("vertices", np.zeros((3, V, 3))), ("joints", np.zeros((2, 20, 3))),
                       ("scores", [1.0, 2.0]), ("timings", {"a": "b"})]:
        assert code_of(P.parse_hypotheses, {**good, key: value}) == P.BAD_MESSAGE
    assert code_of(P.parse_hypotheses, good, num_vertices=V + 1) == P.BAD_MESSAGE
    with pytest.raises(ValueError):
        P.make_hypotheses(np.zeros((2, V, 3)), np.zeros((2, 21, 3)), np.zeros(3))


# ---------------------------------------------------------------------------- fuzz

_WORDS = [*P.OPS, "v", "id", "op", "args", "n", "steps", "guidance_scale", "guidance", "seed",
          "vertices", "keep",
          "joints", "joint_mask", "keypoints", "confidence", "K", "image", "rgb", "handedness",
          "target", "left", "right", "__nd__", "dtype", "shape", "data", "<f4", "|b1", "|O", ""]


def _rand_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(11 if depth < 3 else 7)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice([0, 1, -1, 4, 21, 64, 65, 200, 201, 2**63 - 1, 2**64 - 1, -(2**63),
                           rng.randint(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.5, 1.5, float("nan"), float("inf"), -float("inf"), 1e308,
                           rng.uniform(-10, 10)])
    if kind == 4:
        return rng.choice(_WORDS) if rng.random() < 0.7 else "".join(
            chr(rng.randrange(1, 0x3000)) for _ in range(rng.randrange(70)))
    if kind == 5:
        return rng.randbytes(rng.randrange(40))
    if kind == 6:  # a hand-made, often broken, array map
        dtype = rng.choice(["<f4", "<f8", "<i4", "<i8", "|u1", "|b1", "|O", "<c8", ">f4", 3])
        shape = [rng.choice([0, 1, 2, 3, 21, -1]) for _ in range(rng.randrange(4))]
        return nd(dtype, shape, rng.randbytes(rng.choice([0, 1, 4, 8, 12, 24, 252, 504])))
    if kind == 7:
        return [_rand_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 8:
        return {rng.choice(_WORDS): _rand_value(rng, depth + 1) for _ in range(rng.randrange(4))}
    shape = rng.choice([(21, 3), (21, 2), (21,), (V, 3), (V,), (3, 3), (4, 4, 3), (2,)])
    dtype = rng.choice([np.float32, np.float64, np.int32, np.int64, np.uint8, bool])
    a = np.random.default_rng(rng.randrange(1 << 30)).normal(size=shape) * rng.choice([1, 1e3])
    if rng.random() < 0.1:
        a.flat[0] = rng.choice([np.nan, np.inf])
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(a).astype(dtype) if dtype is np.uint8 else a.astype(dtype)


def _valid_request(rng: random.Random) -> dict[str, Any]:
    op = rng.choice(list(P.OPS))
    g = np.random.default_rng(rng.randrange(1 << 30))
    args: dict[str, Any] = {}
    if P.OPS[op].sampling:
        args = {k: v for k, v in [("n", rng.randint(1, 64)), ("steps", rng.randint(1, 200)),
                                  ("guidance_scale", rng.uniform(0, 5)),
                                  ("seed", rng.randrange(99))]
                if rng.random() < 0.5}
    if op == "inpaint":
        args |= {"vertices": g.normal(size=(V, 3)).astype(np.float32), "keep": g.random(V) < .5}
    elif op == "refit3d":
        args |= {"joints": g.normal(size=(21, 3)), "joint_mask": np.ones(21, np.uint8)}
    elif op == "fit2d":
        args |= {"keypoints": g.random((21, 2)) * 100, "confidence": g.random(21), "K": K_OK}
    elif op == "reconstruct":
        args |= {"rgb": g.integers(0, 255, (6, 5, 3), dtype=np.uint8), "handedness": "right"}
    elif op == "cancel":
        args = {"target": "job-1"}
    return req(op, id=f"id{rng.randrange(1000)}", **args)


def _mutate_struct(rng: random.Random, msg: dict[str, Any]) -> Any:
    target = msg["args"] if msg["args"] and rng.random() < 0.7 else msg
    key = rng.choice(list(target) + _WORDS[-12:])
    action = rng.randrange(3)
    if action == 0:
        target.pop(key, None)
    else:
        target[key] = _rand_value(rng)
    return msg if rng.random() < 0.95 else _rand_value(rng)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        action, i = rng.randrange(4), rng.randrange(max(len(b), 1))
        if action == 0 and b:
            b[i] = rng.randrange(256)
        elif action == 1:
            del b[i:i + rng.randint(1, 8)]
        elif action == 2:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        else:
            b = b[:i]
    return bytes(b)


def test_fuzz_only_protocol_errors():
    rng = random.Random(20240601)
    small = P.Limits(max_message_bytes=4096, max_n=8, max_steps=20, max_pixels=20,
                     max_container_len=16, max_str_len=64)
    outcomes: dict[str, int] = {}
    for i in range(12_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(64))
        elif kind == 1:
            data = _mutate_bytes(rng, P.pack(_valid_request(rng)))
        elif kind == 2:
            data = P.pack(_mutate_struct(rng, _valid_request(rng)))
        else:
            data = P.pack(_valid_request(rng) if rng.random() < 0.5 else _rand_value(rng))
        limits = small if rng.random() < 0.2 else None
        num_vertices = V if rng.random() < 0.5 else None
        try:
            P.parse_reply(P.unpack(data))
        except P.ProtocolError:
            pass
        try:
            P.decode_request(data, limits, num_vertices=num_vertices)
            outcome = "valid"
        except P.ProtocolError as e:
            assert e.code in P.ERROR_CODES and isinstance(e.message, str) and e.message
            outcome = e.code
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes["valid"] > 1000, outcomes
    for code in (P.BAD_MESSAGE, P.BAD_ARGUMENT, P.UNKNOWN_OP, P.UNSUPPORTED_VERSION,
                 P.TOO_LARGE):
        assert outcomes.get(code, 0) >= 5, outcomes


# ---------------------------------------------------------------------------- client


class ToyServer(threading.Thread):
    """A ROUTER echo server: replies to info/generate, with progress and a stale reply
    before generate's result; invalid requests get error replies; mode "silent" never
    answers."""

    def __init__(self, mode: str = "echo"):
        super().__init__(daemon=True)
        self.mode, self.received = mode, []
        self.ready, self.stopping = threading.Event(), threading.Event()
        self.address = ""

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self.ready.set()
        try:
            while not self.stopping.is_set():
                if sock.poll(20):
                    *envelope, payload = sock.recv_multipart()
                    for reply in self.handle(payload):
                        sock.send_multipart([*envelope, P.pack(reply)])
        finally:
            sock.close(linger=0)

    def handle(self, payload: bytes) -> list[dict[str, Any]]:
        try:
            r = P.decode_request(payload, num_vertices=V)
        except P.ProtocolError as e:
            return [P.error_reply(e.request_id, e.code, e.message)]
        self.received.append(r.id)
        if self.mode == "silent":
            return []
        if r.op == "generate":
            n = r.args["n"]
            hyp = P.make_hypotheses(np.full((n, V, 3), r.args["seed"]), np.zeros((n, 21, 3)),
                                    np.arange(n), {"total": 0.01})
            return [*(P.progress_reply(r.id, k / 3, f"step {k}") for k in range(3)),
                    P.ok_reply("stale-id", {"wrong": True}), P.ok_reply(r.id, hyp)]
        if r.op == "refit3d":
            return [P.error_reply(r.id, P.NO_HAND, "no hand here")]
        return [P.ok_reply(r.id, {"op": r.op, "args": r.args})]


@pytest.fixture
def server() -> Iterator[Any]:
    servers: list[ToyServer] = []

    def start(mode: str = "echo") -> ToyServer:
        s = ToyServer(mode)
        s.start()
        assert s.ready.wait(5)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stopping.set()
        s.join(5)


def test_client_blocking_call(server):
    client = HHMRClient(server().address, timeout_s=2, retries=0)
    assert client.info() == {"op": "info", "args": {}}
    res = client.call("cancel", target="job-7")
    assert res == {"op": "cancel", "args": {"target": "job-7"}}
    hyp = client.hypotheses("generate", n=3, seed=5)
    assert len(hyp) == 3 and hyp.vertices.shape == (3, V, 3) and (hyp.vertices == 5).all()


def test_client_job_with_progress(server):
    client = HHMRClient(server().address, timeout_s=2, retries=0)
    job = client.submit("generate", n=2)
    result = None
    for _ in range(500):
        result = job.poll()
        if result is not None:
            break
        threading.Event().wait(0.005)
    assert result is not None and job.done and "wrong" not in result
    assert P.parse_hypotheses(result).vertices.shape == (2, V, 3)
    assert [f for f, _ in job.progress] == pytest.approx([0, 1 / 3, 2 / 3])
    assert job.poll() is result  # stays done


def test_client_error_replies(server):
    client = HHMRClient(server().address, timeout_s=2, retries=0)
    with pytest.raises(RemoteError) as info:
        client.call("refit3d", joints=joints())
    assert info.value.code == P.NO_HAND
    with pytest.raises(RemoteError) as info:
        client.call("generate", n=0)
    assert info.value.code == P.BAD_ARGUMENT and "'n'" in info.value.message
    with pytest.raises(RemoteError) as info:
        client.call("teleport")
    assert info.value.code == P.UNKNOWN_OP
    job = client.submit("fit2d", keypoints=np.full((21, 2), np.nan))
    with pytest.raises(RemoteError):
        job.wait()
    with pytest.raises(RemoteError):  # and again on a later poll
        job.poll()


def test_client_timeout_after_retries(server):
    srv = server("silent")
    client = HHMRClient(srv.address, timeout_s=0.3, retries=2)
    with pytest.raises(TimeoutError):
        client.call("info")
    assert len(srv.received) == 3 and len(set(srv.received)) == 1  # same id, resent twice
    job = HHMRClient(srv.address, timeout_s=0.2, retries=0).submit("status")
    with pytest.raises(TimeoutError):
        job.wait()
