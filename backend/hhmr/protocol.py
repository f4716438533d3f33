"""HHMR wire protocol, version 1: msgpack messages shared by the server and every client.

This module is the reference definition (see docs/protocol.md). It imports only the standard
library, numpy and msgpack, so a Blender add-on can use it. Nothing received is evaluated:
no pickle, no extension types, and arrays are rebuilt from raw bytes of a whitelisted dtype.
"""

from __future__ import annotations

import math
import secrets
import struct
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import msgpack
import numpy as np

PROTOCOL_VERSION = 1
MAX_ID_LEN = 64
NUM_JOINTS = 21
MAX_NDIM = 8
MAX_SEED = 2**63 - 1
MAX_DEADLINE_S = 86_400
MAX_DEPTH = 16  # containers nested deeper than this are refused at decode (BAD_MESSAGE)

# Error codes (the "code" of an error reply).
BAD_MESSAGE = "BAD_MESSAGE"  # not msgpack, not a map, malformed envelope or array encoding
UNSUPPORTED_VERSION = "UNSUPPORTED_VERSION"  # "v" missing or not PROTOCOL_VERSION
UNKNOWN_OP = "UNKNOWN_OP"
BAD_ARGUMENT = "BAD_ARGUMENT"  # wrong/missing/unknown argument, shape, dtype, range, NaN
TOO_LARGE = "TOO_LARGE"  # message, container, string or image above the limits
NO_HAND = "NO_HAND"  # reconstruct: no hand found in the image
CANCELLED = "CANCELLED"  # the request was cancelled by a "cancel" request
BUSY = "BUSY"  # the server's queue is full; try again after the error's retry_after_s
INTERNAL = "INTERNAL"  # a server bug
TIMEOUT = "TIMEOUT"  # the request passed its deadline_s
ERROR_CODES = (BAD_MESSAGE, UNSUPPORTED_VERSION, UNKNOWN_OP, BAD_ARGUMENT, TOO_LARGE, NO_HAND,
               CANCELLED, BUSY, INTERNAL, TIMEOUT)

DEFAULT_MAX_BYTES = 64 << 20
DEFAULT_MAX_CONTAINER_LEN = 10_000
DEFAULT_MAX_STR_LEN = 1 << 20


class ProtocolError(Exception):
    """A message that breaks the protocol. ``code`` is one of ERROR_CODES; ``request_id`` is
    the offending request's id when it could be read (for the error reply)."""

    def __init__(self, code: str, message: str, request_id: str | None = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


@dataclass(frozen=True)
class Limits:
    """Server-side limits; a server reports its own in the ``info`` reply."""

    max_message_bytes: int = DEFAULT_MAX_BYTES
    max_n: int = 64
    max_steps: int = 200
    max_pixels: int = 4096 * 4096
    max_frames: int = 36000  # reconstruct_video: frames in the range asked (20 min at 30/s)
    max_container_len: int = DEFAULT_MAX_CONTAINER_LEN
    max_str_len: int = DEFAULT_MAX_STR_LEN
    max_depth: int = MAX_DEPTH
    max_queued: int = 64  # sampling requests waiting, all clients together; then BUSY
    max_queued_per_client: int = 16  # ... and for one client

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


# ---------------------------------------------------------------------------- arrays + msgpack

_DTYPES: dict[str, np.dtype] = {
    np.dtype(t).str: np.dtype(t)
    for t in (np.float32, np.float64, np.int32, np.int64, np.uint8, np.bool_)
}
_DTYPE_NAMES = {d.name: d for d in _DTYPES.values()}  # "float32", ... accepted on input too
_ND_KEYS = frozenset({"__nd__", "dtype", "shape", "data"})


def encode_array(a: np.ndarray) -> dict[str, Any]:
    """The wire map of an array (little-endian, C order); only whitelisted dtypes."""
    dt = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if dt.str not in _DTYPES:
        raise ProtocolError(BAD_ARGUMENT, f"arrays of dtype {a.dtype} cannot be sent; "
                            f"use one of {', '.join(_DTYPE_NAMES)}")
    data = np.ascontiguousarray(a, dtype=dt).tobytes()
    return {"__nd__": True, "dtype": dt.str, "shape": list(a.shape), "data": data}


def decode_array(m: Mapping[Any, Any]) -> np.ndarray:
    """Rebuild an array from its wire map; raises ProtocolError(BAD_MESSAGE)."""
    def bad(why: str) -> ProtocolError:
        return ProtocolError(BAD_MESSAGE, f"bad array encoding: {why}")

    if set(m) != _ND_KEYS:
        raise bad("the map must have exactly the keys __nd__, dtype, shape, data")
    name, shape, data = m["dtype"], m["shape"], m["data"]
    if m["__nd__"] is not True:
        raise bad("__nd__ must be true")
    dt = (_DTYPES.get(name) or _DTYPE_NAMES.get(name)) if isinstance(name, str) else None
    if dt is None:
        raise bad(f"dtype {show(name)} is not allowed; use one of {', '.join(_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM
            and all(type(s) is int and s >= 0 for s in shape)):
        raise bad(f"shape must be a list of at most {MAX_NDIM} non-negative integers")
    if math.prod(max(s, 1) for s in shape) > 2**40:
        raise bad(f"shape {show(shape)} is absurdly large")
    if not isinstance(data, bytes):
        raise bad("data must be bytes (msgpack bin)")
    need = math.prod(shape) * dt.itemsize
    if need != len(data):
        raise bad(f"shape {shape} of {dt.str} needs {need} bytes, data has {len(data)}")
    if dt.kind == "b":
        raw = np.frombuffer(data, np.uint8)
        if raw.size and raw.max() > 1:
            raise bad("bool array bytes must be 0 or 1")
        return (raw != 0).reshape(shape)
    return np.frombuffer(data, dt).reshape(shape).copy()


def _default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return encode_array(obj)
    if isinstance(obj, np.generic) and obj.dtype.kind in "biuf":
        return obj.item()
    raise TypeError(f"cannot send a value of type {type(obj).__name__}")


def pack(obj: Any) -> bytes:
    """Serialize a message; numpy arrays become array maps, numpy scalars plain numbers."""
    return msgpack.packb(obj, default=_default, use_bin_type=True)


def _object_hook(m: dict[Any, Any]) -> Any:
    return decode_array(m) if "__nd__" in m else m


def _reject_ext(code: int, data: bytes) -> Any:
    raise ProtocolError(BAD_MESSAGE, f"msgpack extension types are not allowed (got type {code})")


def unpack(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES, *,
           max_container_len: int = DEFAULT_MAX_CONTAINER_LEN,
           max_str_len: int = DEFAULT_MAX_STR_LEN, decode_arrays: bool = True,
           max_depth: int = MAX_DEPTH) -> Any:
    """Deserialize a message safely, refusing anything above the limits (TOO_LARGE) and any
    malformed input or nesting deeper than `max_depth` (BAD_MESSAGE)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError(BAD_MESSAGE, f"a message must be bytes, got {type(data).__name__}")
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise ProtocolError(TOO_LARGE, f"message of {size} bytes exceeds the limit of {max_bytes}")
    try:
        msg = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            object_hook=_object_hook if decode_arrays else None, ext_hook=_reject_ext,
            max_bin_len=max_bytes, max_str_len=max_str_len, max_ext_len=max_str_len,
            max_array_len=max_container_len, max_map_len=max_container_len)
        _check_depth(msg, max_depth)
        return msg
    except ProtocolError:
        raise
    except ValueError as e:
        if "exceeds max_" in str(e):
            raise ProtocolError(TOO_LARGE, f"message part too large: {e}") from None
        raise ProtocolError(BAD_MESSAGE, f"not a valid msgpack message ({type(e).__name__})"
                            ) from None
    except Exception as e:  # noqa: BLE001 - any decoder failure is the sender's fault
        raise ProtocolError(BAD_MESSAGE, f"not a valid msgpack message ({type(e).__name__})"
                            ) from None


def _check_depth(obj: Any, limit: int) -> None:
    """Refuse containers nested deeper than `limit` (without recursion: msgpack decodes up to
    1024 levels, deeper than Python's own recursion limit)."""
    stack = [(obj, 1)]
    while stack:
        x, depth = stack.pop()
        children = x.values() if isinstance(x, dict) else x
        if depth > limit:
            raise ProtocolError(BAD_MESSAGE, f"the message nests maps and lists deeper than "
                                f"{limit} levels")
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return None


def show(x: Any, limit: int = 40) -> str:
    """A client's value quoted in an error message: a short string or a number as itself,
    anything else by its type only (never the repr of client containers: it is unbounded and
    recurses)."""
    if type(x) is str:
        return repr(x[:limit]) + ("..." if len(x) > limit else "")
    if type(x) in (int, float, bool) or x is None:
        return str(x)[:limit]
    return _describe(x)


def peek_id(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> str | None:
    """The request id of a message that fails to decode fully, if it can be read at all."""
    try:
        msg = unpack(data, max_bytes, decode_arrays=False, max_depth=1 << 30)
    except ProtocolError:
        return None
    return _valid_id(msg.get("id")) if isinstance(msg, dict) else None


# ---------------------------------------------------------------------------- requests

def _valid_id(x: Any) -> str | None:
    return x if isinstance(x, str) and 0 < len(x) <= MAX_ID_LEN else None


def new_id() -> str:
    """A random request id (16 hex characters)."""
    return secrets.token_hex(8)


def make_request(op: str, args: Mapping[str, Any] | None = None, id: str | None = None
                 ) -> dict[str, Any]:
    """A request map; drops arguments that are None."""
    clean = {k: v for k, v in (args or {}).items() if v is not None}
    return {"v": PROTOCOL_VERSION, "id": id or new_id(), "op": op, "args": clean}


@dataclass(frozen=True)
class Request:
    """A validated request; ``args`` holds every argument of the op, defaults filled in
    (None where optional and absent), arrays as float32 / bool / uint8."""

    id: str
    op: str
    args: dict[str, Any]


@dataclass(frozen=True)
class _Ctx:
    limits: Limits
    num_vertices: int | None


Check = Callable[[str, Any, _Ctx], Any]


@dataclass(frozen=True)
class Arg:
    """One argument of an op: its checker, whether required, its default and a description."""

    check: Check
    doc: str
    required: bool = False
    default: Any = None  # a value, or a callable of the validation context
    aliases: tuple[str, ...] = ()  # deprecated older names, still accepted for this argument


def _bad(message: str) -> ProtocolError:
    return ProtocolError(BAD_ARGUMENT, message)


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray):
        return f"an array of {x.dtype} with shape {list(x.shape)}"
    names = {bool: "a bool", int: "an integer", float: "a float", str: "a string",
             bytes: "bytes", list: "a list", dict: "a map", type(None): "nil"}
    return names.get(type(x), f"a {type(x).__name__}")


def _integer(lo: int, hi: int | str) -> Check:
    def check(name: str, x: Any, ctx: _Ctx) -> int:
        top = getattr(ctx.limits, hi) if isinstance(hi, str) else hi
        if type(x) is not int:
            raise _bad(f"'{name}' must be an integer, got {_describe(x)}")
        if not lo <= x <= top:
            raise _bad(f"'{name}' must be between {lo} and {top}, got {x}")
        return x
    return check


def _number(hi: float) -> Check:
    """A checker of a number in [0, hi]."""
    def check(name: str, x: Any, ctx: _Ctx) -> float:
        if type(x) not in (int, float):
            raise _bad(f"'{name}' must be a number, got {_describe(x)}")
        if not (math.isfinite(x) and 0 <= x <= hi):
            raise _bad(f"'{name}' must be a number between 0 and {hi:g}, got {x:g}")
        return float(x)
    return check


def _positive_seconds(name: str, x: Any, ctx: _Ctx) -> float:
    if type(x) not in (int, float) or not 0 < x <= MAX_DEADLINE_S:
        raise _bad(f"'{name}' must be a number of seconds in (0, {MAX_DEADLINE_S}], "
                   f"got {show(x)}")
    return float(x)


def _boolean(name: str, x: Any, ctx: _Ctx) -> bool:
    if type(x) is not bool:
        raise _bad(f"'{name}' must be true or false, got {_describe(x)}")
    return x


def _choice(*options: str) -> Check:
    def check(name: str, x: Any, ctx: _Ctx) -> str:
        if not isinstance(x, str) or x not in options:
            raise _bad(f"'{name}' must be one of {', '.join(map(repr, options))}, "
                       f"got {show(x)}")
        return x
    return check


def _request_id(name: str, x: Any, ctx: _Ctx) -> str:
    if _valid_id(x) is None:
        raise _bad(f"'{name}' must be a request id (a string of 1 to {MAX_ID_LEN} characters)")
    return x


def _fmt_shape(shape: tuple[int | str, ...], ctx: _Ctx) -> str:
    dims = [str(ctx.num_vertices) if s == "V" and ctx.num_vertices else str(s) for s in shape]
    return "[" + ", ".join(dims) + "]"


def _array(shape: tuple[int | str, ...], kind: str, lo: float | None = None,
           hi: float | None = None) -> Check:
    """An array checker. Shape entries: an int, "V" (the server's vertex count) or a letter
    (any size >= 1). kind: "float" (-> finite float32), "mask" (bool or uint8 0/1 -> bool),
    "uint8"."""
    def check(name: str, x: Any, ctx: _Ctx) -> np.ndarray:
        want = _fmt_shape(shape, ctx)
        if not isinstance(x, np.ndarray):
            raise _bad(f"'{name}' must be an array of shape {want}, got {_describe(x)}")
        fixed = [ctx.num_vertices if s == "V" else s for s in shape]
        if x.ndim != len(shape) or any(
                g < 1 or (isinstance(f, int) and f != g) for f, g in zip(fixed, x.shape,
                                                                          strict=True)):
            raise _bad(f"'{name}' must have shape {want}, got {list(x.shape)}")
        if kind == "mask":
            if x.dtype == np.uint8 and x.max() <= 1:
                return x.astype(bool)
            if x.dtype != bool:
                raise _bad(f"'{name}' must be a bool array or a uint8 array of 0/1")
            return x
        if kind == "uint8":
            if x.dtype != np.uint8:
                raise _bad(f"'{name}' must be a uint8 array, got {x.dtype}")
            return x
        if x.dtype.kind not in "fiu":
            raise _bad(f"'{name}' must be a numeric (float) array, got {x.dtype}")
        if not np.isfinite(x).all():
            raise _bad(f"'{name}' contains NaN or infinite values")
        with np.errstate(over="ignore", invalid="ignore"):
            out = x.astype(np.float32)
        if not np.isfinite(out).all():
            raise _bad(f"'{name}' has values too large for float32")
        if (lo is not None and out.min() < lo) or (hi is not None and out.max() > hi):
            bounds = ", ".join("" if b is None else f"{b:g}" for b in (lo, hi))
            raise _bad(f"'{name}' values must lie in [{bounds}], got values from "
                       f"{out.min():g} to {out.max():g}")
        return out
    return check


def _camera(name: str, x: Any, ctx: _Ctx) -> np.ndarray:
    K = _array((3, 3), "float", -MAX_PIXELS_COORD, MAX_PIXELS_COORD)(name, x, ctx)
    if K[0, 0] <= 0 or K[1, 1] <= 0 or not np.allclose(K[2], [0, 0, 1], atol=1e-6):
        raise _bad(f"'{name}' must be a pinhole intrinsics matrix [[fx, s, cx], [0, fy, cy], "
                   "[0, 0, 1]] with fx, fy > 0")
    return K


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) read from a PNG or JPEG header without decoding the image: a cheap,
    early refusal only. A JPEG may carry several frame headers before its first scan, and
    decoders take the last, so this returns the largest of them; the server still checks the
    size its decoder reads before decoding (`hhmr.images.open_image`)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise _bad("'image' is a truncated or corrupt PNG")
        w, h = struct.unpack(">II", data[16:24])
        return w, h
    if data[:2] != b"\xff\xd8":
        raise _bad("'image' must be PNG or JPEG file bytes")
    frames: list[tuple[int, int]] = []
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            break
        marker = data[i + 1]
        if marker == 0xFF or marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:
            i += 1 if marker == 0xFF else 2  # fill byte or a marker without a length
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image / start of scan: no frame header may follow
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC) and i + 9 <= len(data):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            frames.append((w, h))
        i += 2 + max(length, 2)
    if not frames:
        raise _bad("'image' is a truncated or corrupt JPEG (no frame header)")
    return max(frames, key=lambda f: f[0] * f[1])


def _image(name: str, x: Any, ctx: _Ctx) -> bytes:
    if not isinstance(x, bytes) or not x:
        raise _bad(f"'{name}' must be PNG or JPEG file bytes, got {_describe(x)}")
    w, h = image_size(x)
    if w < 1 or h < 1:
        raise _bad(f"'{name}' has an empty size {w}x{h}")
    _check_pixels(name, w, h, ctx)
    return x


def _rgb(name: str, x: Any, ctx: _Ctx) -> np.ndarray:
    x = _array(("H", "W", 3), "uint8")(name, x, ctx)
    _check_pixels(name, x.shape[1], x.shape[0], ctx)
    return x


def _check_pixels(name: str, w: int, h: int, ctx: _Ctx) -> None:
    if w * h > ctx.limits.max_pixels:
        raise ProtocolError(TOO_LARGE, f"'{name}' has {w}x{h} pixels, more than the limit of "
                            f"{ctx.limits.max_pixels}; downscale it")


# Ranges of the numeric arguments (docs/protocol.md). Far beyond any useful value, they refuse
# absurd ones (1e30, 1e308) that would overflow the sampler into NaN or infinite results.
# The shipped weights tune guidance scales of 5e-5 (fit2d, x0) to 0.01 (refit3d, x_t) and an
# autoguidance weight of 1.9; the Blender add-on's strength slider stops at 2, its widest
# variety is autoguidance 2.25.
MAX_GUIDANCE_SCALE = 1.0  # guidance_scale, in the task's own units
MAX_GUIDANCE_STRENGTH = 10.0  # guidance_strength, relative to the tuned scale
MAX_AUTOGUIDANCE = 10.0  # generate's autoguidance weight
MAX_COORD = 10.0  # |coordinate| of 3D joints and vertices: model units, metres
MAX_PIXELS_COORD = 1e6  # |coordinate| of 2D keypoints and |entry| of K, in pixels

SAMPLING_ARGS: dict[str, Arg] = {
    "n": Arg(_integer(1, "max_n"), "number of hypotheses, 1..max_n (default 4)",
             default=lambda c: min(4, c.limits.max_n)),
    "steps": Arg(_integer(1, "max_steps"), "diffusion steps, 1..max_steps (default 10)",
                 default=lambda c: min(10, c.limits.max_steps)),
    "guidance_scale": Arg(_number(MAX_GUIDANCE_SCALE), "guidance scale, 0..1, in the task's "
                          "own units (default: the server's tuned one); 'guidance' is its "
                          "deprecated alias", aliases=("guidance",)),
    "guidance_strength": Arg(_number(MAX_GUIDANCE_STRENGTH), "guidance relative to the task's "
                             "tuned scale, 0..10: 1 tuned, 0 none (instead of "
                             "'guidance_scale')"),
    "guidance_space": Arg(_choice("x_t", "x0"), "where guidance acts: 'x_t' (through the "
                          "net, HHMR's) or 'x0' (on its prediction); default: the server's"),
    "central_first": Arg(_boolean, "hypothesis 0 starts from the noise's mean, the sampler's "
                         "central guess (default: true for refit3d, fit2d and reconstruct, "
                         "false for generate and inpaint)"),
    "seed": Arg(_integer(0, MAX_SEED), "random seed, 0..2**63-1 (default 0)", default=0),
    "pose": Arg(_boolean, "solve each hypothesis's rig pose and shape: the result carries "
                "'pose', 'betas', 'corrective' and 'pose_error' (default false: it costs "
                "about 18 ms per hypothesis at n=8 on a 2-core CPU)", default=False),
    "deadline_s": Arg(_positive_seconds, "give up this many seconds after the server received "
                      "the request, queued or running: it ends with TIMEOUT (default: none)"),
}


def _inpaint_check(args: dict[str, Any], ctx: _Ctx) -> None:
    if args["vertices"].shape[0] != args["keep"].shape[0]:
        raise _bad(f"'vertices' has {args['vertices'].shape[0]} rows but 'keep' has "
                   f"{args['keep'].shape[0]}; they must match")


# what a photo conditions on (see hhmr.reconstruct.fit_mode); "+image" needs weights with an
# image encoder (configs/image.toml)
RECONSTRUCT_MODES = ("skel2d", "skel2d+lifted", "skel2d+world", "skel2d+world_all",
                     "skel2d+image", "skel2d+world+image")


def _fit2d_check(args: dict[str, Any], ctx: _Ctx) -> None:
    if args.get("joints3d_confidence") is not None and args.get("joints3d") is None:
        raise _bad("'joints3d_confidence' needs 'joints3d'")


def _reconstruct_check(args: dict[str, Any], ctx: _Ctx) -> None:
    if (args["image"] is None) == (args["rgb"] is None):
        raise _bad("give exactly one of 'image' (PNG/JPEG bytes) or 'rgb' (uint8 [H, W, 3])")
    box = args.get("box")
    if box is not None and not (box[2] > box[0] and box[3] > box[1]):
        raise _bad("'box' must be x0, y0, x1, y1 with x1 > x0 and y1 > y0")


def _video(name: str, x: Any, ctx: _Ctx) -> bytes:
    if not isinstance(x, bytes) or not x:
        raise _bad(f"'{name}' must be the bytes of a video file, got {_describe(x)}")
    return x


def _frames(name: str, x: Any, ctx: _Ctx) -> list[bytes]:
    if not isinstance(x, list) or not x:
        raise _bad(f"'{name}' must be a list of PNG or JPEG file bytes, got {_describe(x)}")
    if len(x) > ctx.limits.max_frames:
        raise ProtocolError(TOO_LARGE, f"'{name}' has {len(x)} images, more than the limit of "
                            f"{ctx.limits.max_frames}")
    for i, image in enumerate(x):
        _image(f"{name}[{i}]", image, ctx)
    return x


def _video_check(args: dict[str, Any], ctx: _Ctx) -> None:
    if (args["video"] is None) == (args["frames"] is None):
        raise _bad("give exactly one of 'video' (a video file's bytes) or 'frames' (a list of "
                   "PNG/JPEG images, an image sequence)")
    if args["end"] is not None and args["end"] <= args["start"]:
        raise _bad("'end' must be greater than 'start'")


MAX_SMOOTHING = 1e4
VIDEO_ARGS: dict[str, Arg] = {
    "video": Arg(_video, "the bytes of a video file (MP4, MOV, AVI, ...: what OpenCV's FFmpeg "
                 "reads), within the message limit"),
    "frames": Arg(_frames, "instead of 'video': an image sequence, a list of PNG or JPEG file "
                  "bytes in order (at most max_frames, each within max_pixels)"),
    "fps": Arg(_number(1000.0), "frames per second of 'frames' (default 30; a video file "
               "says its own)", default=30.0),
    "K": Arg(_camera, "float [3, 3] camera intrinsics, |entries| <= 1e6 (default: a 50 degree "
             "horizontal field of view)"),
    "handedness": Arg(_choice("left", "right"), "the hand to follow (default: the side seen "
                      "in most frames)"),
    "start": Arg(_integer(0, 10**9), "first frame (default 0)", default=0),
    "end": Arg(_integer(1, 10**9), "one past the last frame (default: the clip's end)"),
    "stride": Arg(_integer(1, 1000), "every stride-th frame (default 1)", default=1),
    "smoothing": Arg(_number(MAX_SMOOTHING), "how smooth the animation is, 0..1e4: 0 none "
                     "(default 2; it adds no lag)"),
    "mode": Arg(_choice(*RECONSTRUCT_MODES), "what each frame conditions on (see "
                "reconstruct)"),
    "n": replace(SAMPLING_ARGS["n"], doc="hypotheses per frame, the best kept, 1..max_n "
                 "(default 1)", default=1),
    "steps": replace(SAMPLING_ARGS["steps"], doc="diffusion steps per frame, 1..max_steps "
                     "(default 5)", default=lambda c: min(5, c.limits.max_steps)),
    "seed": SAMPLING_ARGS["seed"],
    "deadline_s": SAMPLING_ARGS["deadline_s"],
}


@dataclass(frozen=True)
class OpSpec:
    """The arguments of an op, a cross-argument check and a description."""

    args: dict[str, Arg]
    doc: str
    check: Callable[[dict[str, Any], _Ctx], None] | None = None
    sampling: bool = False


OPS: dict[str, OpSpec] = {
    "info": OpSpec({}, "server, model and limits description"),
    "status": OpSpec({}, "the server's queue: running and queued request ids"),
    "cancel": OpSpec({"target": Arg(_request_id, "id of the request to cancel", True)},
                     "cancel a running or queued request"),
    "generate": OpSpec({
        "autoguidance": Arg(_number(MAX_AUTOGUIDANCE), "weight of the guide net, 0..10 (1: the "
                            "net alone; default: the server's tuned one; higher spreads hands "
                            "more)"),
        **SAMPLING_ARGS}, "sample hands unconditionally", sampling=True),
    "inpaint": OpSpec({
        "vertices": Arg(_array(("V", 3), "float", -MAX_COORD, MAX_COORD),
                        "float [V, 3] mesh vertices, |x| <= 10", True),
        "keep": Arg(_array(("V",), "mask"), "bool or uint8 [V]: vertices to keep", True),
        **SAMPLING_ARGS}, "complete a mesh, keeping the vertices marked in 'keep'",
        _inpaint_check, True),
    "refit3d": OpSpec({
        "joints": Arg(_array((NUM_JOINTS, 3), "float", -MAX_COORD, MAX_COORD),
                      "float [21, 3] 3D joints in metres, |x| <= 10", True),
        "joint_mask": Arg(_array((NUM_JOINTS,), "mask"), "bool or uint8 [21]: joints to use"),
        **SAMPLING_ARGS}, "fit meshes to 3D joints", sampling=True),
    "fit2d": OpSpec({
        "keypoints": Arg(_array((NUM_JOINTS, 2), "float", -MAX_PIXELS_COORD, MAX_PIXELS_COORD),
                         "float [21, 2] pixel keypoints, |x| <= 1e6", True),
        "confidence": Arg(_array((NUM_JOINTS,), "float", 0.0, 1.0), "float [21] in [0, 1]"),
        "K": Arg(_camera, "float [3, 3] camera intrinsics, |entries| <= 1e6"),
        "joints3d": Arg(_array((NUM_JOINTS, 3), "float", -MAX_COORD, MAX_COORD),
                        "float [21, 3] the same hand's 3D joints in camera axes (metres, any "
                        "origin; e.g. MediaPipe's world landmarks): a second condition"),
        "joints3d_confidence": Arg(_array((NUM_JOINTS,), "float", 0.0, 1.0),
                                   "float [21] in [0, 1], with joints3d: 0 leaves a joint out "
                                   "(not the wrist); its weight in joints3d_mm (default 1)"),
        **SAMPLING_ARGS}, "fit meshes to 2D keypoints", _fit2d_check, True),
    "reconstruct": OpSpec({
        "image": Arg(_image, "PNG or JPEG file bytes"),
        "rgb": Arg(_rgb, "uint8 [H, W, 3] RGB pixels"),
        "K": Arg(_camera, "float [3, 3] camera intrinsics, |entries| <= 1e6"),
        "handedness": Arg(_choice("left", "right"), "'left' or 'right' (default: detected)"),
        "box": Arg(_array((4,), "float", 0.0, MAX_PIXELS_COORD),
                   "float [4] x0, y0, x1, y1 pixels: reconstruct the one hand in this box (the "
                   "landmark network runs on it when the palm detector finds none)"),
        "mode": Arg(_choice(*RECONSTRUCT_MODES), "what the photo conditions on: 'skel2d' "
                    "(the detector's 2D keypoints), 'skel2d+lifted' (with the keypoints lifted "
                    "to the depth of the detector's two 3D estimates; the default), "
                    "'skel2d+world' (with those of its 3D world landmarks that agree with the "
                    "keypoints) or 'skel2d+world_all' (with all of them)"),
        **SAMPLING_ARGS}, "recover hand meshes from an image", _reconstruct_check, True),
    "reconstruct_video": OpSpec(VIDEO_ARGS, "one hand's animation from a video clip: the rig's "
                                "pose per frame and one shape (progress per frame)",
                                _video_check, True),
}

_ENVELOPE = ("v", "id", "op", "args")


def validate_request(msg: Any, limits: Limits | None = None, *,
                     num_vertices: int | None = None) -> Request:
    """Check a decoded request and normalize its arguments; raises ProtocolError."""
    rid = _valid_id(msg.get("id")) if isinstance(msg, dict) else None
    try:
        return _validate(msg, limits or Limits(), num_vertices)
    except ProtocolError as e:
        e.request_id = rid
        raise


def _validate(msg: Any, limits: Limits, num_vertices: int | None) -> Request:
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_MESSAGE, f"a request must be a map, got {_describe(msg)}")
    if "v" not in msg:
        raise ProtocolError(UNSUPPORTED_VERSION, "the request has no protocol version; "
                            f"add \"v\": {PROTOCOL_VERSION}")
    if type(msg["v"]) is not int or msg["v"] != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"protocol version {show(msg['v'])} is not "
                            f"supported; this server speaks version {PROTOCOL_VERSION}")
    extra = [k for k in msg if k not in _ENVELOPE]
    if extra:
        raise ProtocolError(BAD_MESSAGE, f"unknown request field {show(extra[0])}; "
                            f"a request has only {', '.join(_ENVELOPE)}")
    rid, op, args = msg.get("id"), msg.get("op"), msg.get("args", {})
    if _valid_id(rid) is None:
        raise ProtocolError(BAD_MESSAGE, f"'id' must be a string of 1 to {MAX_ID_LEN} "
                            f"characters, got {_describe(rid)}")
    if not isinstance(op, str):
        raise ProtocolError(BAD_MESSAGE, f"'op' must be a string, got {_describe(op)}")
    spec = OPS.get(op)
    if spec is None:
        raise ProtocolError(UNKNOWN_OP, f"unknown op {show(op)}; known ops: {', '.join(OPS)}")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise ProtocolError(BAD_ARGUMENT, f"'args' must be a map, got {_describe(args)}")
    args = _resolve_aliases(spec, args)
    unknown = [k for k in args if k not in spec.args]
    if unknown:
        raise _bad(f"unknown argument {show(unknown[0])} for op '{op}'; "
                   f"accepted: {', '.join(spec.args) or 'none'}")
    ctx = _Ctx(limits, num_vertices)
    out: dict[str, Any] = {}
    for name, arg in spec.args.items():
        value = args.get(name)
        if value is not None:
            out[name] = arg.check(name, value, ctx)
        elif arg.required:
            raise _bad(f"op '{op}' needs argument '{name}': {arg.doc}")
        else:
            out[name] = arg.default(ctx) if callable(arg.default) else arg.default
    if spec.check is not None:
        spec.check(out, ctx)
    return Request(rid, op, out)


def _resolve_aliases(spec: OpSpec, args: dict[Any, Any]) -> dict[Any, Any]:
    """The args with each deprecated alias renamed to its argument (a nil one dropped); an
    argument given under both names is a BAD_ARGUMENT."""
    out = dict(args)
    for name, arg in spec.args.items():
        for old in arg.aliases:
            if old not in out:
                continue
            value = out.pop(old)
            if value is None:
                continue
            if out.get(name) is not None:
                raise _bad(f"give '{name}' or its deprecated alias '{old}', not both")
            out[name] = value
    return out


def decode_request(data: bytes, limits: Limits | None = None, *,
                   num_vertices: int | None = None) -> Request:
    """unpack + validate_request; on failure the ProtocolError carries the id if readable."""
    limits = limits or Limits()
    try:
        msg = unpack(data, limits.max_message_bytes, max_container_len=limits.max_container_len,
                     max_str_len=limits.max_str_len, max_depth=limits.max_depth)
    except ProtocolError as e:
        e.request_id = peek_id(data, limits.max_message_bytes)
        raise
    return validate_request(msg, limits, num_vertices=num_vertices)


# ---------------------------------------------------------------------------- replies

def ok_reply(id: str | None, result: dict[str, Any]) -> dict[str, Any]:
    """The final, successful reply to request ``id``."""
    return {"v": PROTOCOL_VERSION, "id": id, "status": "ok", "result": result}


def error_reply(id: str | None, code: str, message: str,
                retry_after_s: float | None = None) -> dict[str, Any]:
    """The final, failed reply; ``id`` is None when the request's id could not be read.
    A BUSY error says when to try again (``retry_after_s``)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if retry_after_s is not None:
        error["retry_after_s"] = float(retry_after_s)
    return {"v": PROTOCOL_VERSION, "id": id, "status": "error", "error": error}


def progress_reply(id: str, fraction: float, message: str = "",
                   queued: int | None = None) -> dict[str, Any]:
    """An interim reply; any number may precede the final one. While the request waits in
    the server's queue, ``queued`` is its position (0: next)."""
    fraction = float(fraction) if math.isfinite(fraction) else 0.0
    msg = {"v": PROTOCOL_VERSION, "id": id, "status": "progress",
           "progress": min(max(fraction, 0.0), 1.0), "message": message}
    if queued is not None:
        msg["queued"] = int(queued)
    return msg


@dataclass(frozen=True)
class Reply:
    """A parsed reply: status "ok" (result), "error" (code, message) or "progress"."""

    id: str | None
    status: str
    result: dict[str, Any] | None = None
    code: str = ""
    message: str = ""
    fraction: float = 0.0
    retry_after_s: float | None = None  # a BUSY error: when to try again
    queued: int | None = None  # a progress reply: the position in the server's queue


def parse_reply(msg: Any) -> Reply:
    """Check a decoded reply; raises ProtocolError(BAD_MESSAGE)."""
    def bad(why: str) -> ProtocolError:
        return ProtocolError(BAD_MESSAGE, f"bad reply: {why}")

    if not isinstance(msg, dict):
        raise bad("not a map")
    if type(msg.get("v")) is not int or msg["v"] != PROTOCOL_VERSION:
        raise ProtocolError(UNSUPPORTED_VERSION, f"reply has protocol version "
                            f"{show(msg.get('v'))}, expected {PROTOCOL_VERSION}")
    rid, status = msg.get("id"), msg.get("status")
    if rid is not None and _valid_id(rid) is None:
        raise bad("'id' must be a short string or nil")
    if status == "ok":
        if not isinstance(msg.get("result"), dict):
            raise bad("'result' must be a map")
        return Reply(rid, status, result=msg["result"])
    if status == "error":
        err = msg.get("error")
        if not (isinstance(err, dict) and isinstance(err.get("code"), str)
                and isinstance(err.get("message"), str)):
            raise bad("'error' must be a map with string 'code' and 'message'")
        retry = err.get("retry_after_s")
        retry = float(retry) if type(retry) in (int, float) and math.isfinite(retry) else None
        return Reply(rid, status, code=err["code"], message=err["message"],
                     retry_after_s=retry)
    if status == "progress":
        frac, text = msg.get("progress"), msg.get("message", "")
        if type(frac) not in (int, float) or not 0 <= frac <= 1 or not isinstance(text, str):
            raise bad("'progress' must be a number in [0, 1] and 'message' a string")
        queued = msg.get("queued")
        return Reply(rid, status, fraction=float(frac), message=text,
                     queued=queued if type(queued) is int and queued >= 0 else None)
    raise bad(f"unknown status {show(status)}")


# ---------------------------------------------------------------------------- hypotheses

@dataclass
class Hypotheses:
    """The result of the sampling ops: n meshes with their joints and scores."""

    vertices: np.ndarray  # float32 [n, V, 3]
    joints: np.ndarray  # float32 [n, 21, 3]
    scores: np.ndarray  # float32 [n]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    extra: dict[str, Any] = field(default_factory=dict)  # any further result fields

    def __len__(self) -> int:
        return len(self.scores)


def _check_hypotheses(vertices: Any, joints: Any, scores: Any, timings: Any,
                      num_vertices: int | None) -> str | None:
    if not all(isinstance(a, np.ndarray) and a.dtype.kind in "fiu"
               for a in (vertices, joints, scores)):
        return "vertices, joints and scores must be numeric arrays"
    n = scores.shape[0] if scores.ndim == 1 else -1
    if vertices.ndim != 3 or vertices.shape[0] != n or vertices.shape[2] != 3:
        return f"vertices must be [n, V, 3] and scores [n], got {list(vertices.shape)} and " \
               f"{list(scores.shape)}"
    if num_vertices is not None and vertices.shape[1] != num_vertices:
        return f"expected {num_vertices} vertices, got {vertices.shape[1]}"
    if joints.shape != (n, NUM_JOINTS, 3):
        return f"joints must be [{n}, {NUM_JOINTS}, 3], got {list(joints.shape)}"
    if not (isinstance(timings, dict) and all(
            isinstance(k, str) and type(v) in (int, float) for k, v in timings.items())):
        return "timings must map strings to numbers"
    return None


def make_hypotheses(vertices: Any, joints: Any, scores: Any,
                    timings: Mapping[str, float] | None = None, **extra: Any) -> dict[str, Any]:
    """The result map of a sampling op (arrays cast to float32); raises ValueError."""
    v, j, s = (np.asarray(a, dtype=np.float32) for a in (vertices, joints, scores))
    t = {str(k): float(x) for k, x in (timings or {}).items()}
    why = _check_hypotheses(v, j, s, t, None)
    if why:
        raise ValueError(why)
    return {"vertices": v, "joints": j, "scores": s, "timings": t, **extra}


def parse_hypotheses(result: Mapping[str, Any], num_vertices: int | None = None) -> Hypotheses:
    """Hypotheses from a result map; raises ProtocolError(BAD_MESSAGE)."""
    if not isinstance(result, Mapping):
        raise ProtocolError(BAD_MESSAGE, "bad hypotheses: the result must be a map")
    v, j, s = (result.get(k) for k in ("vertices", "joints", "scores"))
    t = result.get("timings", {})
    why = _check_hypotheses(v, j, s, t, num_vertices)
    if why:
        raise ProtocolError(BAD_MESSAGE, f"bad hypotheses: {why}")
    extra = {k: x for k, x in result.items() if k not in ("vertices", "joints", "scores",
                                                          "timings")}
    return Hypotheses(v.astype(np.float32), j.astype(np.float32), s.astype(np.float32),
                      {k: float(x) for k, x in t.items()}, extra)
