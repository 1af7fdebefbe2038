"""The deliverer's HTTP client: one aiohttp session on a private event loop, a batch of
requests sent concurrently (bounded), each answered with what came back or why nothing did.
The loop runs only inside ``send_all``, so the Kafka loop around it stays synchronous."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from forewarn.delivery.request import Request

#: bytes of a response body kept for the dead letter
BODY_KEPT = 2048


@dataclass(frozen=True, slots=True)
class Answer:
    #: None: nothing answered (``error`` says why)
    status: int | None
    error: str | None
    body: str | None
    retry_after: str | None
    seconds: float

    @property
    def status_class(self) -> str:
        if self.status is None:
            return "timeout" if self.error == "timeout" else "connection"
        return f"{self.status // 100}xx"


class HttpSender:
    def __init__(self, concurrency: int) -> None:
        self.loop = asyncio.new_event_loop()
        self._limit = asyncio.Semaphore(concurrency)
        self.session: aiohttp.ClientSession = self.loop.run_until_complete(self._open(concurrency))

    async def _open(self, concurrency: int) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=concurrency, ttl_dns_cache=60)
        # no cookies, no proxy from the environment, no redirects: the destination is exactly
        # the URL in the destinations file
        return aiohttp.ClientSession(
            connector=connector, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
        )

    def send_all(self, requests: Sequence[tuple[Request, float]]) -> list[Answer]:
        """Every request with its timeout (seconds), sent concurrently; answers in order."""
        if not requests:
            return []
        return self.loop.run_until_complete(self._all(requests))

    async def _all(self, requests: Sequence[tuple[Request, float]]) -> list[Answer]:
        return list(await asyncio.gather(*(self._one(r, t) for r, t in requests)))

    async def _one(self, request: Request, timeout: float) -> Answer:
        async with self._limit:
            started = time.perf_counter()
            try:
                async with self.session.request(
                    request.method,
                    request.url,
                    data=request.body,
                    headers=request.headers,
                    timeout=aiohttp.ClientTimeout(total=timeout),
                    allow_redirects=False,
                ) as response:
                    body = await response.content.read(BODY_KEPT)
                    return Answer(
                        response.status,
                        None,
                        body.decode("utf-8", errors="replace"),
                        response.headers.get("Retry-After"),
                        time.perf_counter() - started,
                    )
            except TimeoutError:
                return Answer(None, "timeout", None, None, time.perf_counter() - started)
            except (aiohttp.ClientError, OSError) as e:
                detail = f"connection: {type(e).__name__}: {e}"[:1024]
                return Answer(None, detail, None, None, time.perf_counter() - started)

    def close(self) -> None:
        self.loop.run_until_complete(self.session.close())
        self.loop.close()
