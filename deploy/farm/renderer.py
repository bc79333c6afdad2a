"""The built-in renderer: a real PNG or OpenEXR file per frame, in pure Python (zlib + struct).

The picture depends on the scene name (background colours) and on the frame number (a disc
that moves across the image and a row of bits that spells the frame number), so every frame of
a job is a different file. OpenEXR files are single-part scanline images with half-float
``B``, ``G``, ``R`` channels (linear), uncompressed. Other formats (JPEG) it cannot write:
:func:`write_frame` raises :class:`UnsupportedFormat` rather than write a PNG under their name.
"""

from __future__ import annotations

import struct
import zlib
from enum import StrEnum
from pathlib import Path

WIDTH, HEIGHT = 320, 180
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: OpenEXR magic number (20000630, little-endian) and version field (2, single-part scanline).
EXR_MAGIC = struct.pack("<i", 20000630)
EXR_VERSION = struct.pack("<i", 2)


class ImageFormat(StrEnum):
    """Formats the built-in renderer knows, by their file extension."""

    png = "png"
    exr = "exr"
    jpeg = "jpg"


#: File extensions each format accepts on an output name (the first is added when missing).
EXTENSIONS = {
    ImageFormat.png: (".png",),
    ImageFormat.exr: (".exr",),
    ImageFormat.jpeg: (".jpg", ".jpeg"),
}
#: PluginInfo ``OutputFormat`` values (Blender's ``-F`` names, plus short aliases).
FORMAT_NAMES = {
    "PNG": ImageFormat.png,
    "OPEN_EXR": ImageFormat.exr,
    "EXR": ImageFormat.exr,
    "JPEG": ImageFormat.jpeg,
    "JPG": ImageFormat.jpeg,
}
WRITABLE = frozenset({ImageFormat.png, ImageFormat.exr})


class UnsupportedFormat(ValueError):
    """The built-in renderer cannot write this format."""


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


def render_rows(scene: str, frame: int, width: int = WIDTH, height: int = HEIGHT) -> list[bytes]:
    """One frame of ``scene`` as ``height`` rows of ``width * 3`` bytes (8-bit sRGB)."""
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
    return rows


def render_frame(scene: str, frame: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """The PNG bytes of one frame of ``scene``."""
    return encode_png(width, height, render_rows(scene, frame, width, height))


def _attribute(name: str, kind: str, value: bytes) -> bytes:
    return name.encode() + b"\0" + kind.encode() + b"\0" + struct.pack("<i", len(value)) + value


#: 8-bit sRGB value -> linear half float bytes.
_LINEAR_HALF = [struct.pack("<e", (v / 255) ** 2.2) for v in range(256)]


def encode_exr(width: int, height: int, rows: list[bytes]) -> bytes:
    """A single-part scanline OpenEXR file (half-float B, G, R; no compression).

    ``rows`` are 8-bit sRGB like :func:`encode_png` takes; they are stored linear.
    """
    channels = b"".join(
        name + b"\0" + struct.pack("<iB3xii", 1, 0, 1, 1)  # HALF, not pLinear, sampling 1x1
        for name in (b"B", b"G", b"R")  # channels are stored in alphabetical order
    )
    window = struct.pack("<iiii", 0, 0, width - 1, height - 1)
    header = (
        EXR_MAGIC
        + EXR_VERSION
        + _attribute("channels", "chlist", channels + b"\0")
        + _attribute("compression", "compression", b"\x00")  # NO_COMPRESSION
        + _attribute("dataWindow", "box2i", window)
        + _attribute("displayWindow", "box2i", window)
        + _attribute("lineOrder", "lineOrder", b"\x00")  # INCREASING_Y
        + _attribute("pixelAspectRatio", "float", struct.pack("<f", 1.0))
        + _attribute("screenWindowCenter", "v2f", struct.pack("<ff", 0.0, 0.0))
        + _attribute("screenWindowWidth", "float", struct.pack("<f", 1.0))
        + b"\0"
    )
    half = _LINEAR_HALF
    blocks: list[bytes] = []
    for y, row in enumerate(rows):  # one scan line per block without compression
        pixels = b"".join(
            b"".join(half[v] for v in row[channel::3])
            for channel in (2, 1, 0)  # B, G, R
        )
        blocks.append(struct.pack("<ii", y, len(pixels)) + pixels)
    offsets: list[int] = []
    position = len(header) + 8 * len(blocks)
    for block in blocks:
        offsets.append(position)
        position += len(block)
    return header + struct.pack(f"<{len(offsets)}Q", *offsets) + b"".join(blocks)


def image_format(name: str, path: str) -> ImageFormat:
    """The format a task asks for: PluginInfo ``OutputFormat``, else the output's extension.

    Without either, PNG (the farm's default). Raises :class:`UnsupportedFormat` for a name it
    does not know.
    """
    text = name.strip().upper()
    if text:
        try:
            return FORMAT_NAMES[text]
        except KeyError:
            known = ", ".join(FORMAT_NAMES)
            raise UnsupportedFormat(f"unknown OutputFormat {name!r} (known: {known})") from None
    suffix = Path(path).suffix.lower()
    for fmt, extensions in EXTENSIONS.items():
        if suffix in extensions:
            return fmt
    return ImageFormat.png


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


def write_frame(scene: str, frame: int, pattern: str, fmt: ImageFormat = ImageFormat.png) -> Path:
    """Render one frame in ``fmt`` to the file ``pattern`` names for it.

    The format's extension is added when the name has another or none. A format the
    built-in renderer cannot write raises :class:`UnsupportedFormat` before any file is made.
    """
    if fmt not in WRITABLE:
        raise UnsupportedFormat(
            f"the built-in renderer cannot write {fmt.name.upper()}"
            f" (it writes {', '.join(sorted(f.name.upper() for f in WRITABLE))})"
        )
    path = frame_path(pattern, frame)
    if path.suffix.lower() not in EXTENSIONS[fmt]:
        path = path.with_name(path.name + EXTENSIONS[fmt][0])
    rows = render_rows(scene, frame)
    data = (
        encode_exr(WIDTH, HEIGHT, rows)
        if fmt is ImageFormat.exr
        else encode_png(WIDTH, HEIGHT, rows)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path
