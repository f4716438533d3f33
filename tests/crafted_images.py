"""Hand-built JPEG files for the image-limit tests: huge yet small on disk, cheap to make."""

import struct


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def _sof(width: int, height: int) -> bytes:
    # baseline frame, 8 bits, one component (id 1, 1x1 sampling, quantization table 0)
    return _segment(0xC0, struct.pack(">BHHB", 8, height, width, 1) + bytes([1, 0x11, 0]))


def grey_jpeg(width: int, height: int, fake_first: tuple[int, int] | None = None) -> bytes:
    """A valid baseline greyscale JPEG of one grey, built byte by byte: each Huffman table has
    a single 1-bit code (DC difference 0, end of block), so every 8x8 block costs 2 bits and a
    15000x15000 image is 0.9 MB. `fake_first` = (w, h) puts a second, small frame header
    before the real one; PIL takes the last, a first-header scan the first."""
    blocks = -(-width // 8) * -(-height // 8)
    nbits = 2 * blocks
    data = bytearray(nbits // 8)  # all zero bits: every block's two codes are "0"
    if nbits % 8:
        data.append(0xFF >> (nbits % 8))  # pad the last byte with 1 bits
    one_code = bytes([1] + [0] * 15)  # one code of length 1
    return b"".join([
        b"\xff\xd8",
        _segment(0xDB, b"\x00" + b"\x01" * 64),  # quantization table 0, all ones
        _sof(*fake_first) if fake_first else b"",
        _sof(width, height),
        _segment(0xC4, b"\x00" + one_code + b"\x00"),  # DC table 0: difference category 0
        _segment(0xC4, b"\x10" + one_code + b"\x00"),  # AC table 0: end of block
        _segment(0xDA, bytes([1, 1, 0x00, 0, 63, 0])),  # scan of component 1, tables 0/0
        bytes(data),
        b"\xff\xd9",
    ])


def hidden_frame_jpeg(width: int, height: int) -> bytes:
    """`grey_jpeg` with a 16x16 frame header, then a junk byte, then the real frame header:
    a header scan stops at the junk and sees 16x16 only, PIL skips junk bytes between
    segments and reads the real size."""
    fake = _sof(16, 16)
    data = grey_jpeg(width, height, fake_first=(16, 16))
    at = data.index(fake) + len(fake)
    return data[:at] + b"\x00" + data[at:]
