"""Typed, read-only queries on the services' read models, one module per owning context.

A service's tables are private to it, except the read models it publishes for other
services (in practice, the gateway) to read. Each published read model has exactly one query
module here, **owned by the service that owns the tables** and changed with its projections
and migrations in the same commit (ADR 0007):

* :mod:`libs.readmodels.jobs`: the job service's ``jobs``, ``frames`` and its event store;
* :mod:`libs.readmodels.identity`: the identity service's ``users`` and ``api_keys``;
* :mod:`libs.readmodels.outputs`: the upload service's ``outputs``;
* :mod:`libs.readmodels.uploads`: the upload service's ``uploads``, ``manifests`` and
  ``assets``;
* :mod:`libs.readmodels.scenes`: the same service's ``uploads`` and ``manifests`` as the scene
  a job renders;
* :mod:`libs.readmodels.wallet`: the wallet service's ``balances`` and ``transfers``;
* :mod:`libs.readmodels.billing`: the billing service's ``prices``, ``job_costs``,
  ``cost_lines`` and ``key_spend``;
* :mod:`libs.readmodels.fleet`: the scaler's ``fleet_vms`` and ``vm_usage``.

A query object takes a pool and the owner's schema name (the owner's ``Service.schema``), holds
all the SQL text of its read model, returns typed results and never writes. Give it a pool
from :func:`read_only_pool` so PostgreSQL refuses any write too. The contract tests in
``tests/contracts/`` run the owner's real projections and read back through these modules.
"""

from __future__ import annotations

import asyncpg

from libs.eventstore.store import create_pool


def check_schema(schema: str) -> str:
    """A schema name safe to put into SQL text (a plain identifier)."""
    if not schema.isidentifier():
        raise ValueError(f"bad schema name {schema!r}")
    return schema


async def read_only_pool(dsn: str, max_size: int = 10) -> asyncpg.Pool:
    """A pool on which every transaction is read-only (``default_transaction_read_only``)."""
    return await create_pool(dsn, min_size=1, max_size=max_size, read_only=True)
