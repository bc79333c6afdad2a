"""The built-in renderer: a real PNG per frame, in pure Python (zlib + struct).

The picture depends on the scene name (background colours) and on the frame number (a disc
that moves across the image and a row of bits that spells the frame number), so every frame of
a job is a different file.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

WIDTH, HEIGHT = 320, 180
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(width: int, height: int, rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from ``height`` rows of ``width * 3`` bytes."""
    raw = b"".join(b"\x00" + row for row in rows)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def render_frame(scene: str, frame: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """The PNG bytes of one frame of ``scene``."""
    seed = zlib.crc32(scene.encode())
    base = (seed & 0xFF, (seed >> 8) & 0xFF, (seed >> 16) & 0xFF)
    radius = height // 6
    cx = radius + (frame * 11) % max(1, width - 2 * radius)
    cy = height // 2 + int((height // 4) * (((frame * 7) % 20) - 10) / 10)
    disc = (255 - base[0], 255 - base[1], 255 - base[2])
    bits = [(frame >> i) & 1 for i in range(16)]
    bit_w = width // 16
    rows: list[bytes] = []
    for y in range(height):
        shade = y * 160 // height
        colour = bytes(((c + shade) % 256) for c in base)
        row = bytearray(colour * width)
        dy = y - cy
        if abs(dy) <= radius:
            half = int((radius * radius - dy * dy) ** 0.5)
            left, right = max(0, cx - half), min(width, cx + half + 1)
            row[left * 3 : right * 3] = disc * (right - left)
        if y >= height - 8:
            for i, bit in enumerate(bits):
                value = b"\xff\xff\xff" if bit else b"\x00\x00\x00"
                row[i * bit_w * 3 : (i + 1) * bit_w * 3] = value * bit_w
        rows.append(bytes(row))
    return encode_png(width, height, rows)


def frame_path(pattern: str, frame: int) -> Path:
    """``pattern`` with its last run of ``#`` replaced by the zero-padded frame number.

    Without ``#`` the frame number (4 digits) goes before the extension, as Blender does.
    """
    end = pattern.rfind("#")
    if end < 0:
        path = Path(pattern)
        return path.with_name(f"{path.stem}{frame:04d}{path.suffix}")
    start = end
    while start > 0 and pattern[start - 1] == "#":
        start -= 1
    width = end - start + 1
    return Path(f"{pattern[:start]}{frame:0{width}d}{pattern[end + 1 :]}")


def write_frame(scene: str, frame: int, pattern: str) -> Path:
    """Render one frame to the file ``pattern`` names for it (``.png`` added when missing)."""
    path = frame_path(pattern, frame)
    if path.suffix.lower() != ".png":
        path = path.with_name(path.name + ".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(render_frame(scene, frame))
    tmp.replace(path)
    return path
