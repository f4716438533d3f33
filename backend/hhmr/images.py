"""Decoding untrusted image files under a pixel limit, for the server and the command line.

The limit applies to the size PIL itself reads from the file's headers, before any pixel is
decoded: a header scan of our own could disagree with the decoder (several frame headers, a
format it does not know), so it can only refuse early, never admit. `Image.MAX_IMAGE_PIXELS`
is left alone: it is global, and callers (threads of one server, the CLI) may have other limits.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageError(ValueError):
    """An image that cannot be used: missing, unreadable, corrupt or of a refused format."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the caller's limit (or than PIL's own bomb limit)."""


def open_image(source: bytes | str | Path, max_pixels: int,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """The RGB image of file bytes or a path, decoded only once its size, as PIL reads it, is
    within `max_pixels`; `formats` restricts the PIL formats tried (None: any). Raises
    ImageTooLarge or ImageError, FileNotFoundError for a missing path; the messages name no
    file (the caller does)."""
    fp = io.BytesIO(source) if isinstance(source, bytes | bytearray) else Path(source)
    kinds = f"a {'/'.join(formats)} image" if formats else "an image PIL can read"
    try:
        img = Image.open(fp, formats=formats)  # reads the headers only
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own global bound, met before we could read the size: the error above twice
        # MAX_IMAGE_PIXELS, the warning above once (where a caller made warnings errors)
        bound = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
        raise ImageTooLarge(f"the image has more than {bound} pixels, the limit; downscale "
                            "it") from None
    except UnidentifiedImageError:
        raise ImageError(f"the file is not {kinds}") from None
    except Exception as err:  # noqa: BLE001 - any failure to parse untrusted bytes is theirs
        raise ImageError(f"the file is a corrupt image ({err})") from None
    with img:
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageError(f"the image has an empty size {w}x{h}")
        if w * h > max_pixels:
            raise ImageTooLarge(f"the image has {w}x{h} pixels, more than the limit of "
                                f"{max_pixels}; downscale it")
        try:
            return img.convert("RGB")  # decodes: only now are the pixels allocated
        except Exception as err:  # noqa: BLE001 - truncated or corrupt pixel data
            raise ImageError(f"cannot decode the image ({img.format}): {err}") from None


def image_rgb(source: bytes | str | Path, max_pixels: int,
              formats: tuple[str, ...] | None = None) -> np.ndarray:
    """`open_image` as a uint8 [H, W, 3] array."""
    return np.asarray(open_image(source, max_pixels, formats))
