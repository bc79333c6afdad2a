"""Text that clients send: what every request and command text field accepts.

PostgreSQL's ``text`` and ``jsonb`` cannot hold NUL (``\\u0000``), and UTF-8 (so orjson,
NATS and PostgreSQL) cannot hold a lone surrogate (``\\ud800``); other control characters
break logs and displays. So client text is refused, with a 422 ``validation_failed``, when
it holds any of them:

* :data:`Line` (names, e-mail addresses, keys): no control character at all (C0, DEL, C1)
  and no surrogate;
* :data:`Lines` (reasons, messages): the same, except that tab and newline are allowed;
* :data:`Secret` (a password presented at login): no NUL and no surrogate; anything else is
  compared, never stored.

Every type here is bounded by a maximum length where it is used. Only requests and commands
use them: events keep plain ``str`` so that history stored under older rules still decodes.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

#: Every C0 control character, DEL and every C1 control character.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: The same, less tab and newline.
_CONTROL_BUT_TAB_NEWLINE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_NUL = re.compile(r"\x00")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class TextRefused(ValueError):
    """Text a client may not send; the message says which character and where."""


def _check(value: str, forbidden: re.Pattern[str], what: str) -> str:
    if (bad := _SURROGATE.search(value)) is not None:
        raise TextRefused(
            f"must be valid Unicode: a lone surrogate U+{ord(bad.group()):04X} is at"
            f" position {bad.start()}"
        )
    if (bad := forbidden.search(value)) is not None:
        raise TextRefused(
            f"must not contain {what}: U+{ord(bad.group()):04X} is at position {bad.start()}"
        )
    return value


def check_line(value: str) -> str:
    """``value`` if it has no control character and no surrogate, else :class:`TextRefused`."""
    return _check(value, _CONTROL, "control characters")


def check_lines(value: str) -> str:
    """Like :func:`check_line`, but tab and newline are allowed."""
    return _check(value, _CONTROL_BUT_TAB_NEWLINE, "control characters other than tab and newline")


def check_secret(value: str) -> str:
    """``value`` if it has no NUL and no surrogate."""
    return _check(value, _NUL, "NUL characters")


def _validator(check: Callable[[str], str]) -> AfterValidator:
    def validate(value: str) -> str:
        try:
            return check(value)
        except TextRefused as e:
            raise PydanticCustomError("text_refused", str(e)) from None

    return AfterValidator(validate)


#: One line of text: no control characters, no surrogates.
Line = Annotated[str, _validator(check_line)]
#: Free text that may span lines (tab and newline allowed).
Lines = Annotated[str, _validator(check_lines)]
#: A secret presented for comparison (never stored as given).
Secret = Annotated[str, _validator(check_secret)]

#: A display name: of a user, a job, an API key or a camera.
Name = Annotated[Line, Field(min_length=1, max_length=200)]
#: Why a client did something, e.g. a cancel reason: kept in history.
Reason = Annotated[Lines, Field(max_length=500)]
#: What an id we issued (``job_…``, ``usr_…``, ``key_…``) looks like when a client sends it.
ID_PATTERN = r"^[A-Za-z0-9_-]+$"
IdText = Annotated[str, Field(min_length=1, max_length=64, pattern=ID_PATTERN)]


def printable(value: str, limit: int = 2000) -> str:
    """``value`` safe to store or log: control characters and surrogates escaped, bounded."""
    escaped = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", value)
    escaped = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", escaped)
    return escaped[:limit]
