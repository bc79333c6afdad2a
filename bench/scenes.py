"""Scenes for the bench's jobs, uploaded through the gateway's upload API as a client does:
create the session, ask for part URLs, PUT the parts straight to the store, complete."""

from __future__ import annotations

import hashlib

import httpx


async def upload_scene(
    api: httpx.AsyncClient, headers: dict[str, str], data: bytes, name: str = "bench.blend"
) -> str:
    """A completed scene upload of ``data``; its id."""
    body = {"file_name": name, "size_bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    r = await api.post("/v1/uploads", json=body, headers=headers)
    r.raise_for_status()
    session = r.json()
    upload_id: str = session["upload_id"]
    size = session["part_size_bytes"]
    parts = {i + 1: data[o : o + size] for i, o in enumerate(range(0, len(data), size))}
    asked = [{"part_number": n, "sha256": hashlib.sha256(p).hexdigest()} for n, p in parts.items()]
    r = await api.post(f"/v1/uploads/{upload_id}/part-urls", json={"parts": asked}, headers=headers)
    r.raise_for_status()
    async with httpx.AsyncClient(timeout=300) as store:
        for url in r.json()["urls"]:
            put = await store.put(
                url["url"], content=parts[url["part_number"]], headers=url["headers"]
            )
            put.raise_for_status()
    r = await api.post(f"/v1/uploads/{upload_id}/complete", headers=headers)
    r.raise_for_status()
    return upload_id
