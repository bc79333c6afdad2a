"""A service declared in one place: what it owns, what it needs, what it runs.

Every ``services/<name>/service.py`` ends with ``SERVICE = Service(...)``. The runtime
(:mod:`libs.runtime`) runs any declaration; ``renderctl`` reads the declarations to find
every schema and projection (:func:`declared`), so a new projection needs no second list.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from libs.config import BaseServiceSettings

if TYPE_CHECKING:
    from libs.eventstore.processor import Projection
    from libs.runtime import ServiceRuntime

#: Wires what needs live connections (command handlers, consumers, background tasks,
#: readiness checks, front doors) onto a started runtime; what it returns is ``rt.wired``.
Wire = Callable[["ServiceRuntime[Any]"], Awaitable[Any]]


@dataclass(frozen=True)
class Service:
    """The declaration of one service."""

    #: Service name (NATS queue group, log field, health name), e.g. ``"job"``.
    name: str
    #: The PostgreSQL schema it owns: its events, read models, checkpoints and inbox.
    schema: str
    #: Its settings class: its own ``RF_<NAME>_`` prefix over the shared ``RF_`` ones.
    settings: type[BaseServiceSettings]
    #: Read models it keeps, each with its own tables (created by its migrations).
    projections: Sequence[Projection] = ()
    #: Connects handlers, consumers, background tasks and readiness checks.
    wire: Wire | None = None
    #: Numbered ``NNNN_name.sql`` files, applied in order under a lock at start-up.
    migrations: Path | None = None
    #: Names of the secret settings it uses; ``make up`` hands it only these.
    secrets: frozenset[str] = field(default_factory=frozenset)
    #: Whether it records events; one that does not (the gateway) runs no relay and no feed
    #: watcher.
    records_events: bool = True


def declared(package: str = "services") -> list[Service]:
    """Every service declaration under ``package`` (``services.<name>.service.SERVICE``)."""
    root = importlib.import_module(package)
    found: list[Service] = []
    for info in sorted(pkgutil.iter_modules(root.__path__), key=lambda m: m.name):
        if not info.ispkg:
            continue
        try:
            module = importlib.import_module(f"{package}.{info.name}.service")
        except ModuleNotFoundError:
            continue
        service = getattr(module, "SERVICE", None)
        if isinstance(service, Service):
            found.append(service)
    return found


def by_schema(services: Sequence[Service]) -> dict[str, Service]:
    return {s.schema: s for s in services}
