"""Request bodies read within limits of size, time and memory held across requests.

    body = await read_body(request, limit=10_064_000, what="the upload", timeout=30.0, budget=budget)

    @releases_body                 # a route handler that calls read_body: its budget bytes come back when it returns
    async def search(request): ...

Limits, in the order they apply:
    size     a Content-Length above `limit` is refused before any byte is read; a body that passes it while
             arriving (chunked) is refused at once (413)
    budget   the declared length (or, chunked, each chunk as it arrives) is taken from a ByteBudget shared by all
             requests; past it the request is refused (Busy, answered 503 by the app): 40 clients that each send
             10 MB and stop short hold at most the budget, not 400 MB
    time     the whole body within `timeout` seconds of the handler starting to read it (408): a client that stops
             sending holds its connection and its bytes for `timeout` seconds, not for as long as it likes
    feed     `feed(chunk)` sees every chunk as it arrives and may refuse the body early (the multipart part count)

Refusals before the whole body is read carry `Connection: close` (CLOSE): the server does not wait for the rest.
The body is gathered in one bytearray, so each chunk is freed as soon as it is copied and the buffer is a single
large allocation (returned to the OS on free, see server.pools.return_large_frees_to_os).

Exceptions:
    BodyRefused(Exception)   400 (bad Content-Length, client gone, refused by feed), 408, 413; `status`, `message`,
                             `headers`
    server.pools.Busy        the byte budget is spent
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .pools import Busy, ByteBudget

__all__ = ["CLOSE", "BodyRefused", "read_body", "releases_body"]

CLOSE = {"Connection": "close"}  # an answer given before the body was read: the rest of it is not waited for


class BodyRefused(Exception):
    """A request body refused while it was read; answered `status` with {"error": message} and `headers`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = CLOSE if headers is None else headers


async def read_body(
    request: Request,
    *,
    limit: int,
    what: str,
    timeout: float,
    budget: ByteBudget,
    feed: Callable[[bytes], None] | None = None,
) -> bytes:
    """The request body within `limit` bytes, `timeout` seconds and `budget` (module docstring); `what` names it in
    errors ("the upload"). Bytes taken from the budget are recorded on request.state for `releases_body`."""
    declared = request.headers.get("content-length")
    size = None
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BodyRefused(400, f"bad Content-Length header {declared!r}") from None
        if size > limit:
            raise BodyRefused(413, f"{what} is too large: {size:,} bytes, the limit is {limit:,} bytes")
        _hold(request, budget, size)
    body = bytearray()

    async def read_all() -> None:
        async for chunk in request.stream():
            if len(body) + len(chunk) > limit:
                raise BodyRefused(413, f"{what} is too large: more than the limit of {limit:,} bytes")
            if size is None:  # chunked: held as it arrives (h11 delivers no more than a Content-Length)
                _hold(request, budget, len(chunk))
            if feed is not None:
                feed(chunk)
            body.extend(chunk)

    try:
        await asyncio.wait_for(read_all(), timeout)  # one task per body, not one timer per chunk
    except asyncio.TimeoutError:
        raise BodyRefused(
            408, f"{what} arrived too slowly: {len(body):,} bytes in {timeout:g} s, the time limit for a request body"
        ) from None
    except ClientDisconnect:
        raise BodyRefused(400, f"the client closed the connection before sending all of {what}") from None
    return bytes(body)


def _hold(request: Request, budget: ByteBudget, n: int) -> None:
    if n <= 0:
        return
    if not budget.take(n):
        raise Busy(f"the server holds too many uploads in progress ({budget.held:,} bytes); retry in a moment")
    request.state.body_budget = budget
    request.state.body_held = getattr(request.state, "body_held", 0) + n


def releases_body(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a route handler that calls `read_body`: the budget bytes its request took are given back when it returns
    (or raises), after the body's last use."""

    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        finally:
            held = getattr(request.state, "body_held", 0)
            if held:
                request.state.body_held = 0
                request.state.body_budget.give(held)

    wrapped.__name__ = handler.__name__
    wrapped.__doc__ = handler.__doc__
    return wrapped
