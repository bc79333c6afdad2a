"""The base of every error class, and the registry each concrete error class joins.

A concrete error is a subclass of :class:`DomainError` that declares, in its own body,
``code`` (stable snake_case wire name), ``http_status``, ``retryable`` and ``Details`` (the
pydantic model its details must fit, or None for no details). Declaring the class registers
it; a code declared twice is refused, so the registry is complete and unambiguous by
construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict

_SNAKE = re.compile(r"[a-z]+(_[a-z]+)*")
_DECLARED = ("code", "http_status", "retryable", "Details")


class ErrorDetails(BaseModel):
    """Base of every details model. Fields a newer peer adds are ignored, not refused."""

    model_config = ConfigDict(frozen=True, extra="ignore")


D = TypeVar("D", bound=ErrorDetails | None)


class ErrorRegistry:
    """Error code -> error class. A duplicate code, or one declared after freezing, is refused."""

    def __init__(self) -> None:
        self._classes: dict[str, type[DomainError[Any]]] = {}
        self._frozen = False

    def register(self, cls: type[DomainError[Any]]) -> None:
        missing = [a for a in _DECLARED if a not in vars(cls)]
        if missing:
            raise TypeError(f"{cls.__qualname__} must declare {', '.join(missing)}")
        if not _SNAKE.fullmatch(cls.code):
            raise ValueError(f"error code {cls.code!r} is not snake_case")
        taken = self._classes.get(cls.code)
        if taken is not None:
            raise ValueError(f"error code {cls.code!r} of {cls.__qualname__} is taken by {taken}")
        if self._frozen:
            raise RuntimeError(
                f"{cls.__qualname__} is declared after ErrorCode was built;"
                " declare errors in a module that contracts/errors/wire.py imports"
            )
        self._classes[cls.code] = cls

    def freeze(self) -> None:
        """Refuse new codes from now on (ErrorCode has been built from these)."""
        self._frozen = True

    def get(self, code: str) -> type[DomainError[Any]] | None:
        return self._classes.get(code)

    def codes(self) -> list[str]:
        return list(self._classes)

    def __iter__(self) -> Iterator[type[DomainError[Any]]]:
        return iter(self._classes.values())


#: Every error class of every context, by code.
ERRORS = ErrorRegistry()


class DomainError(Exception, Generic[D]):
    """Raised by domain, command and gateway code; carried over NATS as an ``ErrorBody``.

    Construct a concrete subclass with a message and its details, either as the model or as
    keyword fields, e.g. ``JobNotFound("no job j1", JobRef(job_id="j1"))`` or
    ``JobNotFound("no job j1", job_id="j1")``; the details are validated by ``Details``.
    ``except DomainError`` catches every error of every context.
    """

    code: str
    http_status: int
    retryable: bool
    Details: ClassVar[type[ErrorDetails] | None]

    def __init_subclass__(cls, *, registry: ErrorRegistry | None = None, **kwargs: Any) -> None:
        """Register a subclass that declares its own ``code`` (in ``registry``, default ERRORS)."""
        super().__init_subclass__(**kwargs)
        if "code" in vars(cls):
            (registry or ERRORS).register(cls)

    def __init__(self, message: str, details: D | None = None, /, **fields: Any) -> None:
        if getattr(type(self), "code", None) is None:
            raise TypeError(f"{type(self).__name__} has no code: raise one of its subclasses")
        super().__init__(message)
        self.message = message
        self.details: D = self._validated(details, fields)

    def _validated(self, details: D | None, fields: dict[str, Any]) -> D:
        model = type(self).Details
        if model is None:
            if details is not None or fields:
                raise TypeError(f"{type(self).__name__} takes no details")
            return cast(D, None)
        if details is not None and fields:
            raise TypeError("pass the details as a model or as keywords, not both")
        return cast(D, model.model_validate(fields if details is None else details))

    def details_json(self) -> dict[str, Any] | None:
        """The details as they go on the wire (JSON types, field aliases)."""
        if self.details is None:
            return None
        return self.details.model_dump(mode="json", by_alias=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, {self.details!r})"
