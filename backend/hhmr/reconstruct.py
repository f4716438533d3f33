"""Hand meshes from real photos: MediaPipe finds hands and 21 keypoints, `fit2d` fits meshes.

MediaPipe labels handedness as if the photo were mirrored (a selfie), so its label is
swapped for ordinary photos. Left hands are mirrored in (keypoints reflected about the
principal point) and out (meshes reflected x -> -x in the camera frame), so a left hand comes
back as a left hand, in the camera frame of the photo.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from hhmr.hand.mirror import mirror_axis_angle, mirror_faces, mirror_points
from hhmr.protocol import RECONSTRUCT_MODES
from hhmr.sampling import HandDiffusionPipeline, Hypotheses
from hhmr.sampling.config import PhotoConfig

log = logging.getLogger("hhmr.reconstruct")

DEFAULT_FOV_DEG = 50.0  # horizontal field of view assumed when K is not given


class NoHandError(ValueError):
    """No hand was found in the image."""


@dataclass
class Detection:
    keypoints: np.ndarray  # [21, 2] pixels
    world: np.ndarray  # [21, 3] MediaPipe world landmarks (metres, hand-centred)
    handedness: str  # "left" / "right", for an ordinary (unmirrored) photo
    score: float
    # [21] the image landmarks' depth (pixels, x's scale, relative to the wrist, smaller is
    # nearer): the network's second depth estimate, beside the world landmarks' z
    depth: np.ndarray | None = None


def default_intrinsics(width: int, height: int, fov_deg: float = DEFAULT_FOV_DEG
                       ) -> np.ndarray:
    """K for a pinhole camera with the given horizontal field of view, centred."""
    f = width / 2 / math.tan(math.radians(fov_deg) / 2)
    return np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], dtype=np.float32)


# Retries when MediaPipe's palm detector finds nothing: a hand that fills the frame (a tight
# crop) is found once the photo gets a margin, replicated from its edges, then mirrored.
RETRY_PADS = (("edge", 0.25), ("edge", 0.5), ("reflect", 0.25))


class HandDetector:
    """MediaPipe Hands built once and kept warm (building its graph costs more than running
    it); one photo at a time. The `detect` extra."""

    def __init__(self, max_hands: int = 4, min_confidence: float = 0.3) -> None:
        try:
            import mediapipe as mp
        except ImportError as err:
            raise ImportError("hand detection needs MediaPipe: pip install -e '.[detect]'"
                              ) from err
        self._hands = mp.solutions.hands.Hands(static_image_mode=True, max_num_hands=max_hands,
                                               min_detection_confidence=min_confidence)
        self._lock = threading.Lock()

    def __call__(self, rgb: np.ndarray) -> list[Detection]:
        """The hands in an RGB uint8 image [H, W, 3]: as it is, else with margins
        (RETRY_PADS); a hand found in a margin only (a mirrored copy) does not count."""
        rgb = np.ascontiguousarray(rgb[..., :3])
        h, w = rgb.shape[:2]
        found = self._detect(rgb, 0, 0)
        for mode, frac in RETRY_PADS:
            if found:
                break
            ph, pw = int(h * frac), int(w * frac)
            padded = np.pad(rgb, ((ph, ph), (pw, pw), (0, 0)), mode=mode)
            found = [d for d in self._detect(padded, pw, ph)
                     if 0 <= d.keypoints[:, 0].mean() < w and 0 <= d.keypoints[:, 1].mean() < h]
        return found

    def _detect(self, rgb: np.ndarray, dx: int, dy: int) -> list[Detection]:
        """Detections in `rgb`, keypoints moved by (-dx, -dy) into the unpadded photo."""
        h, w = rgb.shape[:2]
        with self._lock:
            res = self._hands.process(rgb)
        return detections(res, w, h, dx, dy)


def detections(res, w: int, h: int, dx: float = 0, dy: float = 0) -> list[Detection]:
    """MediaPipe Hands' result for a w x h image as Detections, keypoints moved by
    (-dx, -dy) and handedness swapped for an ordinary photo."""
    if not res.multi_hand_landmarks:
        return []
    out = []
    for lms, world, handed in zip(res.multi_hand_landmarks, res.multi_hand_world_landmarks,
                                  res.multi_handedness, strict=True):
        kp = np.array([[p.x * w - dx, p.y * h - dy] for p in lms.landmark], np.float32)
        wl = np.array([[p.x, p.y, p.z] for p in world.landmark], dtype=np.float32)
        depth = np.array([p.z * w for p in lms.landmark], np.float32)
        label = handed.classification[0].label.lower()
        swapped = "left" if label == "right" else "right"  # MediaPipe assumes a mirror
        out.append(Detection(kp, wl, swapped, float(handed.classification[0].score), depth))
    return out


class LandmarkNet:
    """MediaPipe's hand landmark network (`hand_landmark_full.tflite` from the mediapipe
    wheel, run by ai-edge-litert) on a box the user gives, for hands the palm detector misses
    (gloves, instruments). It wants an upright hand filling a 224 px crop, so the box is
    tried at `ANGLES` and `SCALES` and the crop where it is surest a hand is present wins,
    then refined once from its own landmarks as MediaPipe tracks. One crop at a time."""

    ANGLES = tuple(range(0, 360, 30))  # degrees, the crop's rotation
    SCALES = (0.8, 1.0, 1.25)  # the crop's side over the box's longer side
    MIN_PRESENCE = 0.5

    def __init__(self) -> None:
        import os

        try:
            import mediapipe
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ImportError("a hand in a box needs MediaPipe and ai-edge-litert: pip install "
                              "-e '.[detect]'") from err
        path = os.path.join(os.path.dirname(mediapipe.__file__), "modules", "hand_landmark",
                            "hand_landmark_full.tflite")
        self._net = Interpreter(model_path=path, num_threads=1)
        self._net.allocate_tensors()
        self._input = self._net.get_input_details()[0]["index"]
        # landmarks (crop pixels), presence, handedness, world landmarks (metres)
        outputs = sorted(self._net.get_output_details(), key=lambda d: d["name"])
        if [int(np.prod(d["shape"])) for d in outputs] != [63, 1, 1, 63]:
            raise RuntimeError(f"{path} is not the hand landmark network this code reads")
        self._outputs = [d["index"] for d in outputs]
        self._lock = threading.Lock()

    def _run(self, rgb: np.ndarray, cx: float, cy: float, side: float, angle: float
             ) -> tuple[np.ndarray, np.ndarray, float, float, np.ndarray]:
        """(keypoints [21, 2] image pixels, world [21, 3] camera axes, presence, right-hand
        score as MediaPipe gives it, depth [21] image pixels) for the square crop of `side`
        pixels centred at (cx, cy), rotated by `angle` radians."""
        from PIL import Image

        c, s, k = math.cos(angle), math.sin(angle), side / 224
        # image point = centre + R(angle) (crop pixel - 112) k
        a = (k * c, -k * s, cx - 112 * k * (c - s), k * s, k * c, cy - 112 * k * (s + c))
        crop = Image.fromarray(rgb).transform((224, 224), Image.AFFINE, a,
                                              resample=Image.BILINEAR)
        with self._lock:
            self._net.set_tensor(self._input,
                                 (np.asarray(crop, np.float32) / 255)[None])
            self._net.invoke()
            lm, presence, right, world = (self._net.get_tensor(i) for i in self._outputs)
        lm = lm.reshape(21, 3)
        kp = np.stack([a[0] * lm[:, 0] + a[1] * lm[:, 1] + a[2],
                       a[3] * lm[:, 0] + a[4] * lm[:, 1] + a[5]], 1).astype(np.float32)
        world = world.reshape(21, 3).astype(np.float32)
        world[:, :2] = world[:, :2] @ np.array([[c, s], [-s, c]], np.float32)  # crop -> image
        # MediaPipe's graph scales z as x, then divides it by 0.4 (its landmarks calculator's
        # normalize_z): the same depth as the Hands solution's (tests/test_reconstruct.py)
        depth = (lm[:, 2] * k / 0.4).astype(np.float32)
        return kp, world, float(presence.ravel()[0]), float(right.ravel()[0]), depth

    @staticmethod
    def tracking_crop(kp: np.ndarray) -> tuple[float, float, float, float]:
        """The crop (cx, cy, side, angle radians) MediaPipe tracks a hand with from its
        keypoints [21, 2]: their box in the hand's own frame (middle finger up), twice its
        size, moved a tenth towards the fingers."""
        d = kp[9] - kp[0]
        angle = math.atan2(d[0], -d[1])
        c, s = math.cos(angle), math.sin(angle)
        rot = np.array([[c, -s], [s, c]], np.float32)  # hand frame -> image
        local = kp @ rot  # image -> hand frame
        lo, hi = local.min(0), local.max(0)
        side = float((hi - lo).max()) * 2.0
        centre = rot @ ((lo + hi) / 2 - [0.0, 0.1 * side])
        return float(centre[0]), float(centre[1]), side, angle

    def search(self, rgb: np.ndarray, box, angles=ANGLES, scales=SCALES):
        """`_run`'s result on the crop centred on `box` (x0, y0, x1, y1 pixels) where the
        network is surest of a hand, over `angles` (degrees) and `scales` (of the box's
        longer side)."""
        x0, y0, x1, y1 = (float(v) for v in box)
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0)
        return max((self._run(rgb, cx, cy, side * sc, math.radians(deg))
                    for deg in angles for sc in scales), key=lambda r: r[2])

    def __call__(self, rgb: np.ndarray, box) -> Detection:
        """The hand in `box` (x0, y0, x1, y1 pixels) of an RGB image, or NoHandError."""
        rgb = np.ascontiguousarray(rgb[..., :3])
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (x1 > x0 and y1 > y0):
            raise ValueError("box must be x0, y0, x1, y1 with x1 > x0 and y1 > y0")
        best = self.search(rgb, box)
        again = self._run(rgb, *self.tracking_crop(best[0]))
        best = again if again[2] > best[2] else best
        if best[2] < self.MIN_PRESENCE:
            raise NoHandError(f"no hand found in the box (the landmark network is "
                              f"{best[2]:.0%} sure of one)")
        # the network's score is for the photo as given, not mirrored like the Hands
        # solution's label (tests/test_reconstruct.py checks it on dev photos)
        side_label = "right" if best[3] > 0.5 else "left"
        return Detection(best[0], best[1], side_label, best[2], best[4])


@functools.lru_cache(maxsize=1)
def landmark_net() -> LandmarkNet:
    """The process's warm landmark network (built on first use)."""
    return LandmarkNet()


def detect_in_box(rgb: np.ndarray, box) -> Detection:
    """The hand in `box`: the palm detector's, if it finds one centred in the box, else the
    landmark network's on the box."""
    x0, y0, x1, y1 = (float(v) for v in box)
    for det in detect_hands(rgb):
        mx, my = det.keypoints.mean(0)
        if x0 <= mx <= x1 and y0 <= my <= y1:
            return det
    return landmark_net()(rgb, box)


@functools.lru_cache(maxsize=2)
def hand_detector(max_hands: int = 4, min_confidence: float = 0.3) -> HandDetector:
    """The process's warm detector for these settings (a resource, built on first use)."""
    return HandDetector(max_hands, min_confidence)


def detect_hands(rgb: np.ndarray, max_hands: int = 4, min_confidence: float = 0.3
                 ) -> list[Detection]:
    """Run MediaPipe Hands (the `detect` extra) on an RGB uint8 image [H, W, 3]."""
    return hand_detector(max_hands, min_confidence)(rgb)


def _ortho(kp: np.ndarray, world: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The best scaled orthographic view of the world landmarks [21, 3] along their own z
    axis (their x, y are the image's up to a few degrees) onto the keypoints [21, 2]: both
    centroids and the scale."""
    a_mean, b_mean = world[:, :2].mean(0), kp.mean(0)
    a, b = world[:, :2] - a_mean, kp - b_mean
    return a_mean, b_mean, float((a * b).sum() / max((a * a).sum(), 1e-12))


def world_residual(kp: np.ndarray, world: np.ndarray) -> np.ndarray:
    """How far each world landmark [21, 3] is from its 2D keypoint [21, 2] in `_ortho`'s
    view, as a fraction of the keypoints' extent [21]."""
    a_mean, b_mean, scale = _ortho(kp, world)
    extent = float(np.linalg.norm(kp.max(0) - kp.min(0))) or 1.0
    return np.linalg.norm((world[:, :2] - a_mean) * scale - (kp - b_mean), axis=1) / extent


def _depths(kp: np.ndarray, world: np.ndarray, depth: np.ndarray | None
            ) -> tuple[np.ndarray, np.ndarray | None, float]:
    """The two depth estimates about their means [21] (metres; the image landmarks' None
    without `depth`) and the pixels per metre of `_ortho`'s view."""
    _, _, scale = _ortho(kp[1:], world[1:])
    scale = max(scale, 1e-6)
    image = None if depth is None else (depth - depth.mean()) / scale
    return world[:, 2] - world[:, 2].mean(), image, scale


def depth_disagreement(kp: np.ndarray, world: np.ndarray, depth: np.ndarray | None) -> float:
    """How far MediaPipe's two depth estimates (the world landmarks' z and the image
    landmarks' `depth`) disagree: their RMS difference over the hand's extent (0 without
    `depth`). On the dev photos the lifted skeleton's error grows with it; past about 10 %
    the keypoints alone do as well (docs/photos.md)."""
    a, b, _ = _depths(kp, world, depth)
    if b is None:
        return 0.0
    extent = float(np.linalg.norm(world.max(0) - world.min(0))) or 1.0
    return float(np.sqrt(((a - b) ** 2).mean())) / extent


def lift_keypoints(kp: np.ndarray, world: np.ndarray, depth: np.ndarray | None,
                   K: np.ndarray) -> np.ndarray:
    """The keypoints [21, 2] lifted along their camera rays to a 3D skeleton [21, 3] (camera
    frame, metres): the hand's distance from the world landmarks' [21, 3] size against the
    keypoints' (`_ortho`), each joint's depth about it the mean of the two depth estimates of
    MediaPipe's network, the world landmarks' z and the image landmarks' `depth` [21] (pixels;
    None: the world z alone). It projects onto the keypoints exactly; the two depths' errors
    are partly independent, so their mean is nearer the truth than either (docs/photos.md)."""
    dz, image, scale = _depths(kp, world, depth)
    if image is not None:
        dz = 0.5 * (dz + image)
    f = (float(K[0, 0]) + float(K[1, 1])) / 2
    z = f / scale + dz
    return np.stack([(kp[:, 0] - K[0, 2]) * z / K[0, 0], (kp[:, 1] - K[1, 2]) * z / K[1, 1], z],
                    1).astype(np.float32)


def usable_lift(det: Detection, K: np.ndarray, photo: PhotoConfig) -> np.ndarray | None:
    """The detection's lifted keypoints (`lift_keypoints`), or None where its depth is not
    to be trusted: the two depths disagree (`max_depth_disagreement`), the world landmarks
    have no extent in the image, or a joint would land behind the camera."""
    if _ortho(det.keypoints[1:], det.world[1:])[2] <= 1e-6:
        return None
    if depth_disagreement(det.keypoints, det.world, det.depth) > photo.max_depth_disagreement:
        return None
    lifted = lift_keypoints(det.keypoints, det.world, det.depth, K)
    return lifted if (lifted[:, 2] > 0).all() else None


def gate_world(kp: np.ndarray, world: np.ndarray | None, photo: PhotoConfig | None
               ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """The world landmarks [21, 3] and their confidence [21] for fit2d: with a gate (`photo`,
    see `PhotoConfig`), 1 where a landmark agrees with its keypoint (`world_residual`) and
    always at the origin, none at all when fewer than `min_agreeing` agree, and a disagreeing
    wrist re-anchored first (`anchor_wrist`); without one (None), all of them."""
    if world is None or photo is None:
        return world, None
    residual = world_residual(kp, world)
    if photo.anchor_wrist and residual[0] > photo.world_gate:
        a_mean, b_mean, scale = _ortho(kp[1:], world[1:])  # the view the fingers agree on
        if scale <= 1e-6:
            return None, None
        world = world.copy()
        world[0, :2] = a_mean + (kp[0] - b_mean) / scale
        residual = world_residual(kp, world)
    conf3d = (residual <= photo.world_gate).astype(np.float32)
    conf3d[0] = 1.0  # the origin
    if conf3d.sum() < photo.min_agreeing:  # most disagree with the photo: none is used
        return None, None
    return world, conf3d


def fit_detection(pipe: HandDiffusionPipeline, kp: np.ndarray, handedness: str,
                  K: np.ndarray, confidence: np.ndarray | None = None,
                  progress: Callable[[int, int], None] | None = None,
                  world: np.ndarray | None = None, gate: PhotoConfig | None = None,
                  rgb: np.ndarray | None = None,
                  image_encoder: str | None = None, **opts) -> Hypotheses:
    """fit2d in the camera frame, with `world` landmarks [21, 3] (camera axes, metres) as a
    3D view when given (with a `gate`, only those that agree with the keypoints, see
    `gate_world`) and, with `image_encoder`, the tokens of the photo `rgb` cropped around
    the keypoints; a left hand is fitted mirrored and mirrored back."""
    tokens, encode_ms = None, 0.0
    if image_encoder is not None:
        from hhmr.encoders import hand_crop
        from hhmr.encoders import image_encoder as encoder

        t0 = time.perf_counter()
        crop = hand_crop(rgb, kp, mirror=handedness == "left")
        tokens = encoder(image_encoder)(crop[None])[0]
        encode_ms = (time.perf_counter() - t0) * 1000
    kp = np.asarray(kp, dtype=np.float32).copy()
    if world is not None:
        world = np.asarray(world, dtype=np.float32).copy()
    if handedness == "left":
        kp[:, 0] = 2 * K[0, 2] - kp[:, 0]
        if world is not None:
            world[:, 0] = -world[:, 0]
    world, conf3d = gate_world(kp, world, gate)
    h = pipe.fit2d(torch.from_numpy(kp), None if confidence is None else
                   torch.as_tensor(confidence), torch.from_numpy(np.asarray(K, np.float32)),
                   progress=progress, joints3d=world, joints3d_conf=conf3d,
                   image_tokens=tokens, **opts)
    if tokens is not None:
        h.timings["encode_ms"] = encode_ms
    if handedness == "left":
        flip = torch.tensor([-1.0, 1.0, 1.0])
        h.vertices, h.joints = h.vertices * flip, h.joints * flip
        h.extra["transl"] = h.extra["transl"] * flip
        if h.pose is not None:  # the right hand's rig, mirrored (as MirroredHand drives it)
            h.pose = mirror_pose(h.pose)
    h.extra["handedness"] = handedness
    return h


def mirror_pose(pose: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A right hand's solved pose for its mirror image, the left hand (`MirroredHand`'s
    convention: rotations and points mirrored, shape unchanged)."""
    out = dict(pose)
    for k in ("global_orient", "hand_pose"):
        out[k] = mirror_axis_angle(pose[k])
    for k in ("transl", "corrective"):
        out[k] = mirror_points(pose[k])
    return out


def faces_for(pipe: HandDiffusionPipeline, handedness: str) -> np.ndarray:
    f = pipe.hand.faces.cpu()
    return (mirror_faces(f) if handedness == "left" else f).numpy()


def fit_mode(pipe: HandDiffusionPipeline, det: Detection, handedness: str, K: np.ndarray,
             mode: str | None = None, progress: Callable[[int, int], None] | None = None,
             rgb: np.ndarray | None = None, **opts) -> Hypotheses:
    """One detection fitted in one of `hhmr.protocol.RECONSTRUCT_MODES` (None: the pipeline's
    `config.photo.mode`), with the gate of its `config.photo`; the "+image" modes need the
    photo `rgb`."""
    world, gate, encoder = mode_inputs(pipe, det, mode, K)
    if encoder is not None and rgb is None:
        raise ValueError("an image mode needs the photo")
    return fit_detection(pipe, det.keypoints, handedness, K, progress=progress, world=world,
                         gate=gate, rgb=rgb, image_encoder=encoder, **opts)


def mode_inputs(pipe: HandDiffusionPipeline, det: Detection, mode: str | None, K: np.ndarray
                ) -> tuple[np.ndarray | None, PhotoConfig | None, str | None]:
    """The 3D skeleton a mode conditions on (the world landmarks, or the keypoints lifted
    with camera `K`), its gate (`gate_world`'s; None: none / ungated) and the image encoder
    it reads the photo with (None: no image tokens)."""
    photo = pipe.config.photo
    mode = mode or photo.mode
    if mode not in RECONSTRUCT_MODES:
        raise ValueError(f"unknown mode '{mode}': one of {', '.join(RECONSTRUCT_MODES)}")
    signals = mode.split("+")
    world = det.world if {"world", "world_all"} & set(signals) else None
    if "lifted" in signals:
        world = usable_lift(det, K, photo)
    encoder = None
    if "image" in signals:
        if photo.image_encoder is None:
            raise ValueError(f"mode '{mode}' needs weights trained with image tokens "
                             "(hhmr train --config configs/image.toml); these have none")
        encoder = photo.image_encoder
    return world, photo if {"world", "lifted"} & set(signals) else None, encoder


WARM_UP_SEED = 4  # a rendered hand MediaPipe finds (tests/test_reconstruct.py)


def warm_up_photo() -> np.ndarray:
    """A rendered hand [224, 224, 3] from the pose prior that MediaPipe finds: on it the warm-up
    runs the palm detector and the landmark network, not the palm detector alone."""
    from hhmr.data.renders import render_batch

    return render_batch(1, WARM_UP_SEED).images[0]


def warm_up(pipe: HandDiffusionPipeline, n: int = 8) -> float:
    """Pay now what a server's first photo would (about 2.4 s on a 2-core CPU): MediaPipe's
    graph and networks, the frozen trace at `n` hypotheses (the add-on's default) with x0
    guidance's first steps, and the pose solver's first call, on a rendered hand (the open
    hand seen from the front where MediaPipe is missing or finds none). Returns the seconds
    it took."""
    t0 = time.perf_counter()
    try:
        reconstruct(pipe, warm_up_photo(), n=n, steps=1, pose=True)
        return time.perf_counter() - t0
    except (ImportError, NoHandError):
        pass  # no `detect` extra (photos fail later, with its message), or no hand found
    except Exception:  # noqa: BLE001 - the rest still warms; photos will say what is wrong
        log.exception("warming up on a rendered hand failed")
    K = default_intrinsics(256, 256)
    joints = (pipe.hand.keypoint_regressor @ pipe.hand.v_template).cpu().numpy()
    pixels = (joints - joints[0] + np.array([0.0, 0.0, 0.5], np.float32)) @ K.T
    kp = pixels[:, :2] / pixels[:, 2:]
    fit_detection(pipe, kp, "right", K, world=joints - joints[0], gate=pipe.config.photo,
                  n=n, steps=1, pose=True)
    return time.perf_counter() - t0


def reconstruct(pipe: HandDiffusionPipeline, rgb: np.ndarray, K: np.ndarray | None = None,
                handedness: str | None = None,
                progress: Callable[[int, int], None] | None = None, mode: str | None = None,
                box=None, **opts) -> list[tuple[Detection, Hypotheses]]:
    """All hands found in an image, each with its hypotheses (camera frame, metres); with
    `box` (x0, y0, x1, y1 pixels) the one hand in it (`detect_in_box`). `handedness`
    overrides the detected side of a single hand. `progress(step, total)` goes to each
    hand's fit2d; it may raise to cancel."""
    h, w = rgb.shape[:2]
    K = default_intrinsics(w, h) if K is None else np.asarray(K, dtype=np.float32)
    t0 = time.perf_counter()
    found = [detect_in_box(rgb, box)] if box is not None else detect_hands(rgb)
    detect_ms = (time.perf_counter() - t0) * 1000
    if not found:
        raise NoHandError("no hand found in the image: try a larger, sharper or better lit "
                          "view of the hand")
    results = []
    for det in found:
        side = handedness if handedness and len(found) == 1 else det.handedness
        hyps = fit_mode(pipe, det, side, K, mode, progress=progress, rgb=rgb, **opts)
        hyps.timings["detect_ms"] = detect_ms  # the photo's, shared by its hands
        results.append((det, hyps))
    return results
