"""Object keys (``scene_key``, output keys): the one place that says what a key may be.

A key names a file under a root (the scenes bucket, the farm's scenes folder), so it must
never leave that root. A key is:

* relative (no leading ``/``), ``/``-separated, with no empty segment (``a//b``, ``a/``);
* free of ``.`` and ``..`` segments, backslashes, NUL and other control characters;
* made of ``A-Za-z0-9!_.*'()/-`` (the characters that are safe in S3 keys and paths);
* at most :data:`MAX_KEY_LENGTH` characters, :data:`MAX_SEGMENTS` segments and
  :data:`MAX_SEGMENT_LENGTH` characters a segment.

:func:`check_key` is used where a key comes in (the API refuses a bad one with 422);
:func:`confined_path` is used again wherever a key is joined to a root to build a path, and
also refuses a path that resolves outside the root (e.g. through a symlink).
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

MAX_KEY_LENGTH = 1024
MAX_SEGMENTS = 32
MAX_SEGMENT_LENGTH = 255
KEY_CHARACTERS = "A-Za-z0-9!_.*'()/-"
_ALLOWED = re.compile(rf"[{KEY_CHARACTERS}]*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class KeyRefused(ValueError):
    """A key that could name a file outside its root, or is not a key at all."""


def check_key(key: str, what: str = "key") -> str:
    """``key`` if it is a valid object key, else :class:`KeyRefused` saying why."""
    if not key:
        raise KeyRefused(f"{what} is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise KeyRefused(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if (bad := _CONTROL.search(key)) is not None:
        raise KeyRefused(
            f"{what} must not contain control characters: U+{ord(bad.group()):04X} is at"
            f" position {bad.start()}"
        )
    if "\\" in key:
        raise KeyRefused(f"{what} must use '/' between segments, not a backslash")
    if key.startswith("/"):
        raise KeyRefused(f"{what} must be relative: it must not start with '/'")
    segments = key.split("/")
    if len(segments) > MAX_SEGMENTS:
        raise KeyRefused(f"{what} has more than {MAX_SEGMENTS} segments")
    for segment in segments:
        if not segment:
            raise KeyRefused(f"{what} has an empty segment ('//' or a trailing '/')")
        if segment in (".", ".."):
            raise KeyRefused(f"{what} must not have a '{segment}' segment")
        if len(segment) > MAX_SEGMENT_LENGTH:
            raise KeyRefused(f"{what} has a segment longer than {MAX_SEGMENT_LENGTH} characters")
    if not _ALLOWED.fullmatch(key):
        raise KeyRefused(f"{what} may only contain the characters {KEY_CHARACTERS}")
    return key


def confined_path(root: str | Path, key: str, what: str = "key") -> PurePosixPath:
    """``root/key``, after checking ``key`` and that the joined path stays under ``root``.

    The path is resolved (``..``, symlinks that exist here) and must still be under the
    resolved root, else :class:`KeyRefused`. The answer is the plain join, as the machines
    that open it (the farm's workers) see the root.
    """
    check_key(key, what)
    joined = PurePosixPath(root) / key
    resolved_root = Path(root).resolve()
    if not Path(joined).resolve().is_relative_to(resolved_root):
        raise KeyRefused(f"{what} names a path outside {root}")
    return joined
