"""A client of the upload protocol, as a client writer would make one: the gateway API for
sessions, plain HTTP PUTs of the parts straight to the store."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

MiB = 2**20


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cut(data: bytes, part_size: int) -> dict[int, bytes]:
    """``data`` as parts numbered from 1."""
    return {i + 1: data[o : o + part_size] for i, o in enumerate(range(0, len(data), part_size))}


async def put_part(url: dict[str, Any], body: bytes) -> int:
    """PUT a part to its presigned URL with the headers given; the store's status code.

    A fresh connection each time: after a refused PUT some stores leave it unusable."""
    async with httpx.AsyncClient(timeout=120) as store:
        r = await store.put(url["url"], content=body, headers=url["headers"])
        return r.status_code


class Uploader:
    """One user's calls to the upload API."""

    def __init__(self, api: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.api = api
        self.headers = headers

    async def create(
        self, file_name: str, data: bytes, content_type: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "file_name": file_name,
            "size_bytes": len(data),
            "sha256": sha256_hex(data),
        }
        if content_type:
            body["content_type"] = content_type
        r = await self.api.post("/v1/uploads", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created

    async def get(self, upload_id: str) -> dict[str, Any]:
        r = await self.api.get(f"/v1/uploads/{upload_id}", headers=self.headers)
        assert r.status_code == 200, r.text
        got: dict[str, Any] = r.json()
        return got

    async def part_urls(self, upload_id: str, parts: dict[int, bytes]) -> dict[int, Any]:
        """URLs for ``parts`` (part number -> bytes), asked for in batches of 100."""
        numbers, urls = sorted(parts), {}
        for i in range(0, len(numbers), 100):
            batch = [
                {"part_number": n, "sha256": sha256_hex(parts[n])} for n in numbers[i : i + 100]
            ]
            r = await self.api.post(
                f"/v1/uploads/{upload_id}/part-urls", json={"parts": batch}, headers=self.headers
            )
            assert r.status_code == 200, r.text
            urls.update({u["part_number"]: u for u in r.json()["urls"]})
        return urls

    async def send(self, upload_id: str, parts: dict[int, bytes]) -> None:
        """Send ``parts``; the store must take each."""
        urls = await self.part_urls(upload_id, parts)
        for n, body in parts.items():
            assert await put_part(urls[n], body) == 200, n

    async def stored_parts(self, upload_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Every part the store holds, page by page."""
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": limit, **({"cursor": cursor} if cursor else {})}
            r = await self.api.get(
                f"/v1/uploads/{upload_id}/parts", params=params, headers=self.headers
            )
            assert r.status_code == 200, r.text
            page = r.json()
            items += page["items"]
            cursor = page["next_cursor"]
            if cursor is None:
                return items

    async def complete(self, upload_id: str, **headers: str) -> httpx.Response:
        return await self.api.post(
            f"/v1/uploads/{upload_id}/complete", headers={**self.headers, **headers}
        )

    async def abort(self, upload_id: str) -> httpx.Response:
        return await self.api.post(f"/v1/uploads/{upload_id}/abort", headers=self.headers)

    async def upload(self, file_name: str, data: bytes) -> dict[str, Any]:
        """The whole protocol: create, send every part, complete."""
        session = await self.create(file_name, data)
        await self.send(session["upload_id"], cut(data, session["part_size_bytes"]))
        r = await self.complete(session["upload_id"])
        assert r.status_code == 200, r.text
        done: dict[str, Any] = r.json()
        return done
