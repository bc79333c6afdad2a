"""Every registered error: a unique code, a sane status, and details that survive the wire."""

from __future__ import annotations

import typing
from decimal import Decimal
from enum import Enum
from types import NoneType, UnionType
from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from contracts.errors import (
    ERRORS,
    DomainError,
    ErrorBody,
    ErrorCode,
    ErrorDetails,
    ErrorRegistry,
    InternalError,
    JobNotFound,
    JobRef,
    UnknownError,
    error_from_body,
)

CLASSES = list(ERRORS)


def sample(annotation: Any) -> Any:
    """A valid, non-null value of a details field's type (fails on a type it cannot fill)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (UnionType, typing.Union):
        return sample(next(a for a in args if a is not NoneType))
    if origin is list:
        return [sample(args[0])]
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return list(annotation)[-1]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation(**{n: sample(f.annotation) for n, f in annotation.model_fields.items()})
    samples: dict[Any, Any] = {str: "x1", int: 7, Decimal: Decimal("12.34")}
    return samples[annotation]


def example(cls: type[DomainError[Any]]) -> DomainError[Any]:
    return cls(f"{cls.code} happened") if cls.Details is None else cls("m", sample(cls.Details))


def test_there_are_errors_of_every_context() -> None:
    modules = {cls.__module__.rsplit(".", 1)[-1] for cls in CLASSES}
    assert modules == {
        "common",
        "identity",
        "jobs",
        "money",
        "notifier",
        "operations",
        "outputs",
        "render",
        "scenes",
        "uploads",
    }
    assert len(CLASSES) >= 35


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_each_error_declares_a_code_a_status_retryable_and_details(
    cls: type[DomainError[Any]],
) -> None:
    assert ERRORS.get(cls.code) is cls
    assert isinstance(cls.http_status, int) and not isinstance(cls.http_status, bool)
    assert 400 <= cls.http_status <= 599
    assert type(cls.retryable) is bool
    assert cls.Details is None or issubclass(cls.Details, ErrorDetails)
    [base] = cls.__orig_bases__  # type: ignore[attr-defined]
    assert typing.get_args(base) == (NoneType if cls.Details is None else cls.Details,)


def test_codes_are_unique_and_are_exactly_the_error_code_enum() -> None:
    codes = [cls.code for cls in CLASSES]
    assert len(codes) == len(set(codes))
    assert [c.value for c in ErrorCode] == codes
    schema = ErrorBody.model_json_schema()
    assert schema["$defs"]["ErrorCode"]["enum"] == codes


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_details_round_trip_through_error_body_json_into_the_same_class(
    cls: type[DomainError[Any]],
) -> None:
    err = example(cls)
    wire = ErrorBody.of(err, trace_id="t1").model_dump_json()
    body = ErrorBody.model_validate_json(wire)
    assert (body.code, body.retryable, body.trace_id) == (cls.code, cls.retryable, "t1")
    back = error_from_body(orjson.loads(wire))
    assert type(back) is cls
    assert (back.message, back.details) == (err.message, err.details)
    assert (back.code, back.http_status, back.retryable) == (
        cls.code,
        cls.http_status,
        cls.retryable,
    )


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.code)
def test_details_are_validated_by_the_details_model(cls: type[DomainError[Any]]) -> None:
    if cls.Details is None:
        with pytest.raises(TypeError):
            cls("m", unexpected=1)
    else:
        with pytest.raises(ValidationError):
            cls("m")


def test_details_are_given_as_a_model_or_as_keywords() -> None:
    assert JobNotFound("m", job_id="j1").details == JobNotFound("m", JobRef(job_id="j1")).details
    with pytest.raises(TypeError):
        JobNotFound("m", JobRef(job_id="j1"), job_id="j1")


def test_a_duplicate_code_is_refused_and_the_first_class_keeps_it() -> None:
    with pytest.raises(ValueError, match="taken"):

        class Again(DomainError[None]):
            code = "job_not_found"
            http_status = 404
            retryable = False
            Details = None

    assert ERRORS.get("job_not_found") is JobNotFound


def test_a_registry_refuses_duplicates_undeclared_attributes_and_late_codes() -> None:
    registry = ErrorRegistry()

    class First(DomainError[None], registry=registry):
        code = "first"
        http_status = 400
        retryable = False
        Details = None

    assert registry.codes() == ["first"]
    with pytest.raises(ValueError, match="taken"):

        class Twin(DomainError[None], registry=registry):
            code = "first"
            http_status = 409
            retryable = True
            Details = None

    with pytest.raises(TypeError, match="retryable"):

        class Vague(DomainError[None], registry=registry):
            code = "vague"
            http_status = 400
            Details = None

    registry.freeze()
    with pytest.raises(RuntimeError):

        class Late(DomainError[None], registry=registry):
            code = "late"
            http_status = 400
            retryable = False
            Details = None

    assert registry.codes() == ["first"]


def test_the_base_class_is_not_raised_itself() -> None:
    with pytest.raises(TypeError):
        DomainError("what went wrong?")


def test_an_unknown_code_from_a_newer_peer_keeps_its_code_and_answers_500() -> None:
    err = error_from_body({"code": "gpu_on_fire", "message": "hot", "retryable": False})
    assert isinstance(err, UnknownError) and isinstance(err, InternalError)
    assert (err.code, err.message, err.http_status, err.retryable) == (
        "gpu_on_fire",
        "hot",
        500,
        False,
    )
    body = ErrorBody.of(err)
    assert (body.code, body.message, body.retryable) == ("internal_error", "hot", False)


def test_details_that_do_not_fit_the_known_model_give_an_unknown_error() -> None:
    err = error_from_body({"code": "job_not_found", "message": "m", "details": {"job": 1}})
    assert type(err) is UnknownError and err.code == "job_not_found"
