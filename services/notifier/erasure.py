"""Shredding the notifier's copies of an erased user's personal data (ADR 0018), on
``identity.UserErased``.

What the notifier holds that identifies the person is the e-mail address it learnt from
``identity.UserRegistered`` (stream ``recipient-<user>``), and wherever that address was
spelled out since: the metadata of the events it caused (a registration's correlation id
can name the address), an SMTP server's error in an ``EmailAttempted`` and the mails read
model. In one transaction, before the tombstone ``RecipientErased`` is appended:

* ``RecipientAddressRecorded``: ``email`` becomes ``"erased"``;
* every event's data and metadata, every snapshot and every ``mails.last_error`` that spells
  out the address (any case) has it replaced by ``"erased"``;
* the recipient's snapshots are deleted (a cache).

A crash before the tombstone leaves the address erased and the event to be handled again;
running it again finds nothing left to change. A rebuild reads the overwritten events, so
it gives the read models as they are.
"""

from __future__ import annotations

import re

import asyncpg

from contracts.identity import ERASED
from contracts.notifications import RecipientAddressRecorded
from libs.readmodels import check_schema


async def shred(pool: asyncpg.Pool, schema: str, user_id: str) -> None:
    s = check_schema(schema)
    stream = f"recipient-{user_id}"
    async with pool.acquire() as conn, conn.transaction():
        addresses: list[str] = [
            r[0]
            for r in await conn.fetch(
                f"SELECT DISTINCT data->>'email' FROM {s}.events WHERE stream_id = $1"
                " AND type = $2 AND data->>'email' <> $3",
                stream,
                RecipientAddressRecorded.event_type,
                ERASED,
            )
        ]
        await conn.execute(
            f"UPDATE {s}.events SET data = data || $3::jsonb WHERE stream_id = $1 AND type = $2",
            stream,
            RecipientAddressRecorded.event_type,
            {"email": ERASED},
        )
        await conn.execute(f"DELETE FROM {s}.snapshots WHERE stream_id = $1", stream)
        for address in addresses:
            # Case-insensitively, wherever it is spelled out (JSON keeps it as it came).
            pattern = re.escape(address)
            for table, columns in (("events", ("data", "metadata")), ("snapshots", ("state",))):
                sets = ", ".join(
                    f"{c} = regexp_replace({c}::text, $1, $2, 'gi')::jsonb" for c in columns
                )
                holds = " OR ".join(f"strpos(lower({c}::text), lower($3)) > 0" for c in columns)
                await conn.execute(
                    f"UPDATE {s}.{table} SET {sets} WHERE {holds}", pattern, ERASED, address
                )
            await conn.execute(
                f"UPDATE {s}.mails SET last_error = regexp_replace(last_error, $1, $2, 'gi')"
                " WHERE strpos(lower(last_error), lower($3)) > 0",
                pattern,
                ERASED,
                address,
            )
