"""Thumbnails of rendered frames: a small JPEG (the long side ``thumbnail_size`` pixels, the
frame's aspect kept) of every PNG or JPEG frame, made with Pillow.

OpenEXR frames get none: Pillow cannot read OpenEXR, and what Blender writes (compressed,
multi-channel, half or full float, linear light) needs the OpenEXR library (the ``openexr``
wheel, with numpy) and a tone mapping to become a preview, which is more than a preview is
worth here. A frame bigger than ``thumbnail_max_pixels`` gets none either: decoding it takes
about 4 bytes a pixel (a 16384x16384 frame, 1 GiB). A frame with transparency is shown over
white.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

#: Frame file extensions a thumbnail is made of.
THUMBNAIL_SOURCES = frozenset({".png", ".jpg", ".jpeg"})
#: JPEG quality of thumbnails (Pillow's scale, 1-95).
JPEG_QUALITY = 85


class NoThumbnail(Exception):
    """No thumbnail can be made of this frame; the message says why."""


@dataclass(frozen=True)
class Thumbnail:
    data: bytes  # a baseline JPEG
    width: int
    height: int


def make_thumbnail(path: str, long_side: int, max_pixels: int) -> Thumbnail:
    """A JPEG of the frame at ``path`` whose longer side is ``long_side`` pixels (never
    enlarged). Raises :class:`NoThumbnail` for a format it does not read, a frame too big,
    or a file that is no image. Blocking: run it in a thread."""
    extension = os.path.splitext(path)[1].lower()
    if extension not in THUMBNAIL_SOURCES:
        raise NoThumbnail(f"no thumbnail of {extension or 'extension-less'} frames")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise NoThumbnail(f"the frame has {width}x{height} pixels, over {max_pixels}")
            image.draft("RGB", (long_side, long_side))  # JPEG: decode at a smaller scale
            image.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
            small = _opaque(image)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as e:
        raise NoThumbnail(f"the frame cannot be read as an image: {e}") from e
    out = io.BytesIO()
    small.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return Thumbnail(out.getvalue(), small.width, small.height)


def _opaque(image: Image.Image) -> Image.Image:
    """The image in RGB, transparency composed over white."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
