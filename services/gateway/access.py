"""Who may call a route: one declaration per route, read by the check and by the OpenAPI.

Every route declares its requirement once, as ``dependencies=[requires(...)]``. The same
declaration refuses a caller who may not call the route (before the handler runs), lets the
middleware know which paths need no credentials, tags the operation in the OpenAPI
(``x-rf-access``, ``x-rf-scopes``) and decides which operations ``GET /v1/openapi.json``
shows to each caller (:mod:`services.gateway.routes.spec`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from contracts.identity import Scope
from services.gateway.auth import Principal


class Access(StrEnum):
    """Who may call an operation (its ``x-rf-access`` in the OpenAPI)."""

    #: No credentials: registering, logging in, refreshing a session, health probes.
    public = "public"
    #: Signed by the caller instead of authenticated: Razorpay's webhook.
    signed = "signed"
    #: Credentials optional: answered for whoever calls (the per-caller OpenAPI).
    anyone = "anyone"
    #: Any valid credentials: a user session or an API key of any scopes.
    authenticated = "authenticated"
    #: A user session, or an API key holding the route's scope.
    scope = "scope"
    #: A user session (JWT) only; never an API key.
    session = "session"
    #: An administrator's session only.
    admin = "admin"


#: The paths the middleware lets through without credentials.
NO_CREDENTIALS = frozenset({Access.public, Access.signed, Access.anyone})


@dataclass(frozen=True, slots=True)
class Requirement:
    access: Access
    scope: Scope | None = None

    def __post_init__(self) -> None:
        if (self.access is Access.scope) != (self.scope is not None):
            raise ValueError("a scope is given exactly for Access.scope")

    def allows(self, p: Principal | None) -> bool:
        """Whether ``p`` (None: no credentials) may call the route."""
        match self.access:
            case Access.public:
                # An API key's agent has no use for login or registration.
                return p is None or p.api_key_id is None
            case Access.signed:
                return p is not None and p.is_admin  # listed for administrators only
            case Access.anyone:
                return True
            case Access.authenticated:
                return p is not None
            case Access.scope:
                return p is not None and self.scope in p.scopes
            case Access.session:
                return p is not None and p.api_key_id is None
            case Access.admin:
                return p is not None and p.is_admin

    def check(self, p: Principal | None) -> None:
        """Refuse a caller who may not call the route (the middleware authenticated it)."""
        if self.access in NO_CREDENTIALS:
            return
        if p is None:  # the middleware authenticates every path not in NO_CREDENTIALS
            raise RuntimeError("a route needing credentials ran without a principal")
        match self.access:
            case Access.scope:
                assert self.scope is not None
                p.require(self.scope)
            case Access.session:
                p.require_session()
            case Access.admin:
                p.require_admin()

    def openapi(self) -> dict[str, Any]:
        """The operation's tags: ``x-rf-access``, and ``x-rf-scopes``, the scopes an API key
        needs (empty unless ``x-rf-access`` is ``scope``)."""
        extra: dict[str, Any] = {
            "x-rf-access": self.access.value,
            "x-rf-scopes": [self.scope.value] if self.scope else [],
        }
        if self.access in NO_CREDENTIALS:
            extra["security"] = []
        return extra


class _Check:
    """The dependency a route declares; FastAPI runs it before the handler."""

    def __init__(self, requirement: Requirement) -> None:
        self.requirement = requirement

    async def __call__(self, request: Request) -> None:
        self.requirement.check(request.state.principal)


def requires(access: Access | Scope) -> Any:
    """A route's requirement, for ``dependencies=[...]``: an :class:`Access`, or a
    :class:`Scope` (a session, or an API key with that scope)."""
    if isinstance(access, Scope):
        return Depends(_Check(Requirement(Access.scope, access)))
    return Depends(_Check(Requirement(access)))


def requirement_of(route: APIRoute) -> Requirement | None:
    """The requirement ``route`` declares, or None if it declares none."""
    found = [
        d.dependency.requirement
        for d in route.dependencies
        if isinstance(d, DependsParam) and isinstance(d.dependency, _Check)
    ]
    if len(found) > 1:
        raise RuntimeError(f"route {route.path} declares {len(found)} requirements")
    return found[0] if found else None


def declared(routes: Sequence[BaseRoute]) -> Iterator[tuple[str, APIRoute, Requirement]]:
    """Every API route of ``routes`` (included routers too) with its full path and its
    requirement; a route that declares none is refused (so none can be forgotten)."""
    for context in iter_route_contexts(routes):
        route = context.original_route
        if not isinstance(route, APIRoute):
            continue
        requirement = requirement_of(route)
        if requirement is None:
            raise RuntimeError(f"route {context.path} declares no requirement (requires(...))")
        yield str(context.path), route, requirement


def open_paths(routes: Sequence[BaseRoute]) -> dict[str, Access]:
    """The paths that need no credentials (public, signed or optional), from the routes'
    declarations; checked when the app is made."""
    found: dict[str, Access] = {}
    for path, _, requirement in declared(routes):
        if requirement.access in NO_CREDENTIALS:
            if "{" in path:
                raise RuntimeError(f"route {path} needs no credentials: no path parameters")
            found[path] = requirement.access
    return found
