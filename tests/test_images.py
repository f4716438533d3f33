"""Decoding untrusted images under a pixel limit (hhmr.images); no model, no server."""

import io

import numpy as np
import pytest
from crafted_images import grey_jpeg
from hhmr import protocol as P
from hhmr.images import ImageError, ImageTooLarge, image_rgb, open_image
from PIL import Image

LIMIT = P.Limits().max_pixels  # the server's default, 4096 * 4096


def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_crafted_jpeg_is_a_real_image():
    """The hand-built files the limit tests use decode to one grey, and stay small."""
    rgb = image_rgb(grey_jpeg(50, 30), LIMIT)
    assert rgb.shape == (30, 50, 3) and rgb.min() == rgb.max() == 128
    assert len(grey_jpeg(15000, 15000)) < 1 << 20


def test_decodes_within_the_limit():
    rgb = image_rgb(_png(7, 5), 35, formats=("PNG", "JPEG"))
    assert rgb.shape == (5, 7, 3) and rgb.dtype == np.uint8 and (rgb[0, 0] == [10, 20, 30]).all()
    with pytest.raises(ImageTooLarge, match="7x5 pixels"):
        open_image(_png(7, 5), 34)


def test_the_limit_applies_to_the_size_pil_reads():
    """A small frame header before the real, larger frame: a scan of the first header sees
    16x16, PIL (and now protocol.image_size) the real frame; refused before decoding."""
    data = grey_jpeg(5000, 5000, fake_first=(16, 16))
    assert P.image_size(data) == (5000, 5000)  # the largest frame header, not the first
    # TOO_LARGE, not a decode error: a decoder refuses two frame headers, so the size was
    # checked before decoding
    with pytest.raises(ImageTooLarge, match="5000x5000"):
        open_image(data, LIMIT)
    # beyond PIL's own decompression-bomb bound, its error becomes ours too
    with pytest.raises(ImageTooLarge, match=f"more than {LIMIT} pixels"):
        open_image(grey_jpeg(15000, 15000, fake_first=(16, 16)), LIMIT)


def test_broken_files_are_image_errors():
    jpeg = grey_jpeg(640, 640)  # 1.6 kB of scan data
    with pytest.raises(ImageError, match="not a PNG/JPEG image"):
        open_image(b"hello, not an image", LIMIT, formats=("PNG", "JPEG"))
    gif = io.BytesIO()
    Image.new("RGB", (4, 4)).save(gif, format="GIF")
    with pytest.raises(ImageError, match="not a PNG/JPEG image"):
        open_image(gif.getvalue(), LIMIT, formats=("PNG", "JPEG"))
    assert open_image(gif.getvalue(), LIMIT).size == (4, 4)  # any format PIL reads
    with pytest.raises(ImageError, match="cannot decode"):
        open_image(jpeg[:-400], LIMIT)  # the scan cut short
    png = _png(32, 32)
    with pytest.raises(ImageError):
        open_image(png[:60] + bytes(len(png) - 60), LIMIT)  # zeroed pixel data
    with pytest.raises(ImageError):  # a zero height (PIL refuses it itself)
        open_image(grey_jpeg(64, 0), LIMIT)
    with pytest.raises(FileNotFoundError):
        open_image("/nonexistent/hand.jpg", LIMIT)
