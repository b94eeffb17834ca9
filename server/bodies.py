"""Request bodies read within limits of size, time and memory held across requests.

    body = await read_body(request, limit=10_064_000, what="the upload", timeout=30.0, budget=budget)
    form = await read_form(request, limit=10_064_000, what="the upload", timeout=30.0, budget=budget)

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

`read_body` gathers the body in one bytearray, so each chunk is freed as soon as it is copied and the buffer is a
single large allocation (returned to the OS on free, see server.pools.return_large_frees_to_os).

`read_form` parses multipart/form-data with Starlette's MultiPartParser (python-multipart) as the chunks arrive,
under the same three limits, and these of the form itself:
    parts    at most `max_parts` parts (default 16; the API reads one file field), counted as each part begins,
             so a body of 180,000 empty parts is refused within its first chunk
    fields   a part without a filename (a text field) holds at most `max_field_bytes` (64 KiB)
    headers  python-multipart's: at most 8 header lines per part, 4,224 bytes per line
    framing  the body must end with its closing boundary (a cut body is refused, not read as a shorter form)
File parts stay in memory (the body is already bounded by `limit` and the budget): no temporary files.

Refusals before the whole body is read carry `Connection: close` (CLOSE): the server does not wait for the rest.

Exceptions:
    BodyRefused(Exception)   400 (bad Content-Length, client gone, not valid multipart/form-data), 408, 413;
                             `status`, `message`, `headers`
    server.pools.Busy        the byte budget is spent
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from .pools import Busy, ByteBudget

__all__ = [
    "CLOSE",
    "MAX_FIELD_BYTES",
    "MAX_PARTS",
    "BodyRefused",
    "media_type",
    "read_body",
    "read_form",
    "releases_body",
]

T = TypeVar("T")
MAX_PARTS = 16
MAX_FIELD_BYTES = 64 * 1024
# python-multipart logs a warning for each malformed body it meets; the client gets the reason in its 400 answer
logging.getLogger("python_multipart").setLevel(logging.ERROR)

CLOSE = {"Connection": "close"}  # an answer given before the body was read: the rest of it is not waited for


def media_type(request: Request) -> str:
    """The Content-Type's media type, lower-cased, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").partition(";")[0].strip().lower()


class BodyRefused(Exception):
    """A request body refused while it was read; answered `status` with {"error": message} and `headers`."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = CLOSE if headers is None else headers


async def read_body(request: Request, *, limit: int, what: str, timeout: float, budget: ByteBudget) -> bytes:
    """The request body within `limit` bytes, `timeout` seconds and `budget` (module docstring); `what` names it in
    errors ("the upload"). Bytes taken from the budget are recorded on request.state for `releases_body`."""
    body = bytearray()
    reader = _Chunks(request, limit=limit, what=what, budget=budget)

    async def read_all() -> None:
        async for chunk in reader:
            body.extend(chunk)

    await reader.within(read_all(), timeout)
    return bytes(body)


async def read_form(
    request: Request,
    *,
    limit: int,
    what: str,
    timeout: float,
    budget: ByteBudget,
    max_parts: int = MAX_PARTS,
    max_field_bytes: int = MAX_FIELD_BYTES,
) -> FormData:
    """A multipart/form-data body parsed as it arrives (Starlette's MultiPartParser) within the limits of the module
    docstring. File parts are UploadFiles held in memory. BodyRefused(400) names what is wrong with the form."""
    reader = _Chunks(request, limit=limit, what=what, budget=budget)
    parser = _FormParser(request.headers, aiter(reader), max_parts=max_parts, max_field_bytes=max_field_bytes)
    parser.spool_max_size = limit + 1  # never rolled over to a temporary file
    try:
        form = await reader.within(parser.parse(), timeout)
    except MultiPartException as exc:
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None else ""
        raise BodyRefused(400, f"{what} is not valid multipart/form-data: {exc.message}{cause}") from None
    if not parser.complete:
        await form.close()
        raise BodyRefused(400, f"{what} is not valid multipart/form-data: the body ends before its closing boundary")
    return form


class _FormParser(MultiPartParser):
    """Starlette's parser with a limit on the number of parts (files and fields together) and a flag set when the
    closing boundary is reached."""

    def __init__(self, headers, stream, *, max_parts: int, max_field_bytes: int) -> None:
        super().__init__(headers, stream, max_files=max_parts, max_fields=max_parts, max_part_size=max_field_bytes)
        self.max_parts = max_parts
        self.parts = 0
        self.complete = False

    def on_part_begin(self) -> None:
        self.parts += 1
        if self.parts > self.max_parts:
            raise MultiPartException(f"too many parts: more than {self.max_parts}; send one file field 'image'")
        super().on_part_begin()

    def on_end(self) -> None:
        self.complete = True


class _Chunks:
    """The request's chunks within the size limit and the budget; `within` adds the time limit to whatever reads
    them and turns a timeout or a client that goes away into BodyRefused."""

    def __init__(self, request: Request, *, limit: int, what: str, budget: ByteBudget) -> None:
        self.request, self.limit, self.what, self.budget = request, limit, what, budget
        self.got = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        request, limit, what = self.request, self.limit, self.what
        declared = request.headers.get("content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise BodyRefused(400, f"bad Content-Length header {declared!r}") from None
            if size > limit:
                raise BodyRefused(413, f"{what} is too large: {size:,} bytes, the limit is {limit:,} bytes")
            _hold(request, self.budget, size)
        async for chunk in request.stream():
            if self.got + len(chunk) > limit:
                raise BodyRefused(413, f"{what} is too large: more than the limit of {limit:,} bytes")
            if size is None:  # chunked: held as it arrives (h11 delivers no more than a Content-Length)
                _hold(request, self.budget, len(chunk))
            self.got += len(chunk)
            yield chunk

    async def within(self, reading: Awaitable[T], timeout: float) -> T:
        try:
            return await asyncio.wait_for(reading, timeout)  # one task per body, not one timer per chunk
        except asyncio.TimeoutError:
            raise BodyRefused(
                408,
                f"{self.what} arrived too slowly: {self.got:,} bytes in {timeout:g} s, the time limit for a request body",
            ) from None
        except ClientDisconnect:
            raise BodyRefused(400, f"the client closed the connection before sending all of {self.what}") from None


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
