"""The crema web app: the search page and its JSON API (Starlette; `crema serve` runs it under uvicorn).

    app = create_app(model, gallery=gallery, personal=open_personal(model), web=WebSearch(BingClient()))

Routes:
    GET  /                              the page (server/static/index.html), static files under /static/
    POST /api/search[?page=N]           multipart `image` or JSON {"url": ...} -> predictions, web, similar
    GET  /api/web?q=LABEL&page=N        more web results (the page's "more" button)
    GET  /api/inside/{id}/maps?layer=L  PNG grid of a search's feature maps (id from its `inside`; server.inside)
    GET  /api/filters?layer=L           PNG grid of a first convolution's filters (net.visualize)
    GET  /api/gallery/{id}/thumb        gallery thumbnail; /api/gallery/{id}/image[?download=1] the picture
    GET  /api/personal                  the personal gallery: counts, limits, photos
    POST /api/personal                  multipart `image`: add one photo (indexed through the batcher)
    DELETE /api/personal[/{id}]         remove every photo, or one
    GET  /api/personal/{id}/thumb       its thumbnail; /api/personal/{id}/image[?download=1] the photo
    GET  /api/health, /api/models, /api/openapi.json

Request flow of /api/search: the body is read by server.bodies.read_body: the upload limit (413 as soon as it
is passed; the Content-Length header first), `body_timeout` seconds (408, connection closed, for a slower
client), a budget of body bytes held across requests (503 past it); a multipart body is parsed as it arrives by
server.bodies.read_form (Starlette's parser; at most 16 parts). URLs are fetched by scraper.fetch.fetch_url
(SSRF-safe) on their own pool of threads. Decoding and preprocessing run on the decode pool (server.pools: one
thread per core, smallest images first, 503 past its queue), reading no more pixels than the model needs from
large images (net.preprocess `shrink_to`). The forward pass goes through the MicroBatcher (one inference thread,
concurrent requests batched), which also ranks the --gallery index and the personal gallery for the whole batch;
their hits are merged by score, each naming its `source`; the web search runs meanwhile. A photo added to the
personal gallery takes the same path (same limits, same checks,
same batcher), and its features are stored. Every error is JSON {"error": "plain words"} with a 4xx status
(5xx only for upstream failures of a URL fetch, a disk that cannot store a photo, a full pool (503, with
Retry-After) and bugs). Client file names are never used as paths: gallery and personal files are addressed by
integer id (at most 18 digits; anything else is 404).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from net.headers import header_pixels
from net.preprocess import ImageError, decode_side, load_image
from net.visualize import VisualizeError, find_layer

from .batcher import MicroBatcher
from .bodies import CLOSE, BodyRefused, media_type, read_body, read_form, releases_body
from .gallery import Gallery
from .inside import Inside, NotFound
from .model import ALLOWED_FORMATS, Model
from .openapi import openapi_spec
from .personal import GalleryFull, PersonalGallery, prepare_photo
from .pools import Busy, ByteBudget, Gate, WorkPool, return_large_frees_to_os
from .web import WebSearch

__all__ = ["STATIC_DIR", "ApiError", "AppConfig", "create_app"]

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 * 1024  # headers and boundaries around the file in a multipart body
MAX_JSON_BODY = 64 * 1024
MAX_PAGE = 20
_ID = re.compile(r"[0-9]{1,18}")  # gallery and personal ids: int64, and never a 5,000-digit int() in a route
FORMATS_HINT = "send a JPEG, PNG, GIF, BMP or WEBP image"
PERSONAL_OFF = "the personal gallery is turned off on this server (crema serve --no-personal-gallery)"
NO_GALLERY = (
    "no gallery yet: add photos to your personal gallery (drop them under “Your photos” on the page), or index "
    "a folder with `crema index DIR` and start `crema serve --gallery DIR`"
)


class ApiError(Exception):
    """An error answered as JSON {"error": message} with `status` (server.bodies.BodyRefused is answered alike)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class AppConfig:
    """Limits and knobs of one app.

    max_upload      bytes of one image (upload or fetched URL); the multipart body may be 64 KiB larger
    max_pixels      decoded width * height limit (decompression bombs), besides Pillow's own guard
    top_k           predictions returned; similar_k: gallery images returned
    url_timeout     seconds for fetching a URL (all redirects); allow_private_urls: tests only
    batching        micro-batching on/off; max_batch, window_ms: its batch size and waiting window
    threads         Numba threads for the inference thread's parallel kernels (None: Numba's default, all
                    cores); 1 avoids fork-join stalls on a machine crowded with other work
    web_query       template for the web query, "{label}" = the top label's first synonym; None: automatic
                    ("handwritten digit {label}" when every label is a number, else "{label}")
    body_timeout    seconds to receive a request body from its first byte to its last (408 and the connection
                    closed after that): a 10 MB photo needs 2.7 Mbit/s at the default 30 s
    body_budget     bytes of request bodies held at once across requests (503 past it): with 10 MB uploads,
                    20 at once; a body counts from its Content-Length (or as it arrives) until its answer is sent
    decode_workers  threads decoding images at once (None: the cores this process may use); one 40 Mpx
                    PNG holds ~160 MB while it decodes
    decode_queue    decodes waiting for a thread beyond those (503 past it); decode_wait_s: the longest wait
    fetch_workers   URL fetches at once, on their own threads; fetch_queue: fetches waiting beyond those (503);
                    a fetch's wait for a thread counts against its url_timeout
    inside          feature maps for /api/search's `inside` (server.inside): each search's input is kept,
                    inside_cache_bytes in all, for inside_ttl_s seconds, and its maps computed when asked for;
                    inside_ready: a concurrent Future done once the maps forward's kernels are there (`crema
                    serve`: compiled in the background), awaited before the first; inside_queue: maps forwards
                    queued or running on the inference thread at once (503 past it: they wait with the searches)
    """

    max_upload: int = 10_000_000
    max_pixels: int = 40_000_000
    top_k: int = 5
    similar_k: int = 12
    url_timeout: float = 10.0
    allow_private_urls: bool = False
    batching: bool = True
    max_batch: int = 32
    window_ms: float = 5.0
    web_query: str | None = None
    warmup: bool = True
    threads: int | None = None
    body_timeout: float = 30.0
    body_budget: int = 200_000_000
    decode_workers: int | None = None
    decode_queue: int = 32
    decode_wait_s: float = 10.0
    fetch_workers: int = 16
    fetch_queue: int = 16
    inside: bool = True
    inside_cache_bytes: int = 256 << 20
    inside_ttl_s: float = 600.0
    inside_ready: concurrent.futures.Future | None = None
    inside_queue: int = 8


# -- helpers ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Upload:
    """An uploaded file: its bytes and the client's file name (an opaque string, never used as a path)."""

    data: bytes
    filename: str | None


def _ms(t0: float, t1: float) -> float:
    return round(1000.0 * (t1 - t0), 3)


def _image_error(exc: ImageError, source: str) -> ApiError:
    problem = exc.problem
    if "too large" in problem:
        return ApiError(413, f"{source}: {problem}")
    if "not allowed" in problem or "not an image" in problem:
        return ApiError(415, f"{source}: {problem}; {FORMATS_HINT}")
    if "empty" in problem:
        return ApiError(400, f"{source}: {problem}; {FORMATS_HINT}")
    return ApiError(400, f"{source}: {problem}")


def _page(request: Request) -> int:
    raw = request.query_params.get("page", "0")
    try:
        page = int(raw)
    except ValueError:
        raise ApiError(400, f"page must be a whole number 0..{MAX_PAGE}, got {raw!r}") from None
    if not 0 <= page <= MAX_PAGE:
        raise ApiError(400, f"page must be in 0..{MAX_PAGE}, got {page}")
    return page


def _path_id(request: Request) -> int:
    """The {id} of a gallery or personal route: 1 to 18 digits, else 404 (no int() of a huge string)."""
    raw = request.path_params["id"]
    if not _ID.fullmatch(raw):
        raise ApiError(404, f"no such id {raw[:40]!r}: ids are whole numbers of at most 18 digits")
    return int(raw)


def _default_fetcher(url: str, *, max_bytes: int, timeout: float, allow_private: bool) -> bytes:
    from scraper.fetch import fetch_url

    return fetch_url(url, max_bytes=max_bytes, timeout=timeout, allow_private=allow_private).data


def decode_input(model: Model, data: bytes, *, max_pixels: int) -> np.ndarray:
    """`model.preprocess(data)` decoding a large image no bigger than the model needs (net.preprocess `shrink_to`);
    the same numbers for images of up to REDUCE_ABOVE pixels. Raises ImageError."""
    img = load_image(data, max_pixels=max_pixels, allowed_formats=ALLOWED_FORMATS, shrink_to=decode_side(model.pre))
    return model.pre(img)


# -- the app ---------------------------------------------------------------------------------------------------
class _State:
    """Everything the handlers share (kept on app.state.crema)."""

    def __init__(
        self,
        model: Model,
        gallery: Gallery | None,
        gallery_note: str | None,
        personal: PersonalGallery | None,
        web: WebSearch,
        config: AppConfig,
        fetcher: Callable[..., bytes],
    ) -> None:
        self.model = model
        self.gallery = gallery
        self.gallery_note = gallery_note
        self.personal = personal
        self.web = web
        self.config = config
        self.fetcher = fetcher
        self.batcher = MicroBatcher(
            self.infer_batch,
            max_batch=config.max_batch,
            window_ms=config.window_ms,
            enabled=config.batching,
            adaptive=True,
            on_start=self._inference_thread,
        )
        self.model_info = model.info()
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.decodes = WorkPool(
            "crema-decode",
            workers=config.decode_workers or cores,
            max_waiting=config.decode_queue,
            max_wait_s=config.decode_wait_s,
            what="image decodes",
        )
        self.fetches = WorkPool(
            "crema-fetch",
            workers=config.fetch_workers,
            max_waiting=config.fetch_queue,
            max_wait_s=config.url_timeout,
            what="URL fetches",
        )
        self.bodies = ByteBudget(config.body_budget)
        self.maps_gate = Gate(config.inside_queue, "feature-map requests")
        template = config.web_query
        if template is None:
            digits = all(label.strip().isdigit() for label in model.labels)
            template = "handwritten digit {label}" if digits else "{label}"
        self.web_template = template
        self.inside = (
            Inside(
                model.net,
                bgr=model.pre.color and model.pre.channel_swap,
                max_bytes=config.inside_cache_bytes,
                ttl_s=config.inside_ttl_s,
            )
            if config.inside
            else None
        )

    def _inference_thread(self) -> None:
        """The inference thread's Numba thread count (config.threads), set when it starts (the batcher's on_start)."""
        if self.config.threads:
            import numba

            numba.set_num_threads(min(self.config.threads, numba.config.NUMBA_NUM_THREADS))  # this thread only

    def infer_batch(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """The batched step (inference thread): x (N, C, H, W) -> probs (N, K), features (N, D), gallery ids and
        scores (N, k), personal gallery ids and scores (N, k'); each gallery is ranked for the whole batch with one
        matrix product."""
        probs, feats = self.model.infer_any(x)  # micro-batches of any size, each run at steady sizes
        k = self.config.similar_k
        none = np.zeros((len(x), 0), dtype=np.int64), np.zeros((len(x), 0), dtype=np.float32)
        gids, gscores = self.gallery.search_batch(feats, k) if self.gallery is not None else none
        pids, pscores = self.personal.search_batch(feats, k) if self.personal is not None else none
        return probs, feats, gids, gscores, pids, pscores

    def decode_cost(self, data: bytes) -> int:
        """The decode pool's priority for `data`: the pixels its header claims (constant time; unknown headers
        last), so small photos are decoded before large ones that wait."""
        return header_pixels(data) or self.config.max_pixels

    def web_query(self, index: int) -> str:
        return self.web_template.replace("{label}", self.model.query_label(index))

    def read_body(self, request: Request, limit: int, what: str) -> Awaitable[bytes]:
        """server.bodies.read_body within this app's body_timeout and body budget."""
        timeout, budget = self.config.body_timeout, self.bodies
        return read_body(request, limit=limit, what=what, timeout=timeout, budget=budget)

    async def read_upload(self, request: Request) -> Upload:
        """The file field `image` of a multipart/form-data body (server.bodies.read_form), within the upload limit;
        the first one when there are several."""
        cfg = self.config
        limit, timeout, budget = cfg.max_upload + MULTIPART_OVERHEAD, cfg.body_timeout, self.bodies
        form = await read_form(request, limit=limit, what="the upload", timeout=timeout, budget=budget)
        try:
            fields = form.getlist("image")
            if not fields:
                raise ApiError(400, "the form has no file field named 'image'")
            if isinstance(fields[0], str):
                raise ApiError(400, "the form field 'image' is not a file: send the image as a file (with a filename)")
            size = fields[0].size or 0
            if size > cfg.max_upload:
                raise ApiError(413, f"the uploaded image is too large: {size:,} bytes, the limit is {cfg.max_upload:,}")
            return Upload(await fields[0].read(), fields[0].filename)
        finally:
            await form.close()

    async def load_input(self, request: Request) -> tuple[bytes, str]:
        """(image bytes, how to name it in errors) from a multipart upload or a JSON {"url"} body."""
        kind = media_type(request)
        if kind == "multipart/form-data":
            return (await self.read_upload(request)).data, "the uploaded file"
        if kind == "application/json":
            body = await self.read_body(request, MAX_JSON_BODY, "the JSON body")
            try:
                obj = json.loads(body)
            except RecursionError:
                raise ApiError(400, 'the JSON body is nested too deeply; send {"url": "https://..."}') from None
            except ValueError:
                raise ApiError(400, 'the body is not valid JSON; send {"url": "https://..."}') from None
            url = obj.get("url") if isinstance(obj, dict) else None
            if not isinstance(url, str) or not url.strip():
                raise ApiError(400, 'the JSON body needs a "url" string, e.g. {"url": "https://example.com/cat.jpg"}')
            return await self.fetch(url.strip()), f"the image at {url.strip()[:200]}"
        raise ApiError(
            415,
            f"unsupported Content-Type {kind or '(none)'}: upload the image as multipart/form-data "
            'with a field named "image", or send JSON {"url": "..."}',
        )

    async def fetch(self, url: str) -> bytes:
        from scraper.fetch import FetchError, TooLargeError, UnsafeURLError

        cfg = self.config
        deadline = time.monotonic() + cfg.url_timeout  # the wait for a fetch thread counts against url_timeout

        def job() -> bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError(f"timed out after {cfg.url_timeout:g} s waiting for a free fetch thread")
            return self.fetcher(url, max_bytes=cfg.max_upload, timeout=left, allow_private=cfg.allow_private_urls)

        try:
            return await self.fetches.run(job)
        except UnsafeURLError as exc:
            raise ApiError(400, f"this URL cannot be fetched: {exc}") from None
        except TooLargeError:
            raise ApiError(413, f"the image at this URL is larger than the {cfg.max_upload:,} byte limit") from None
        except FetchError as exc:
            msg = str(exc)
            status = 504 if "timed out" in msg or "timeout" in msg.lower() else 502
            raise ApiError(status, f"could not fetch the image: {msg}") from None
        except ValueError as exc:
            raise ApiError(400, f"bad URL: {exc}") from None

    def similar(self, gids: np.ndarray, gscores: np.ndarray, pids: np.ndarray, pscores: np.ndarray) -> list[dict]:
        """One request's gallery and personal hits merged by score (ties: the gallery's first, then by id),
        the best `similar_k`: [{"id", "source", "score", "label", "name", "thumb_url", "image_url"}]."""
        hits = []
        if self.gallery is not None:
            for h in self.gallery.hits(gids, gscores):
                hits.append({**h, "source": "gallery", "name": None, **_urls("gallery", h["id"])})
        if self.personal is not None:
            for h in self.personal.hits(pids, pscores):
                hits.append({**h, "source": "personal", "label": None, **_urls("personal", h["id"])})
        hits.sort(key=lambda h: -h["score"])  # stable: each source is already best first, ties by id
        return hits[: self.config.similar_k]

    def similar_note(self) -> str | None:
        """Why `similar` is empty when there is nothing to rank against (None when there is)."""
        if self.gallery is not None or (self.personal is not None and len(self.personal)):
            return None
        return NO_GALLERY if self.personal is not None else self.gallery_note


def _urls(source: str, i: int) -> dict:
    return {"thumb_url": f"/api/{source}/{i}/thumb", "image_url": f"/api/{source}/{i}/image"}


def _state(request: Request) -> _State:
    return request.app.state.crema


@releases_body
async def search(request: Request) -> Response:
    st = _state(request)
    t0 = time.perf_counter()
    page = _page(request)
    data, source = await st.load_input(request)
    t_read = time.perf_counter()
    st.batcher.expect()  # adaptive micro-batching: a batch forming now may wait (within its window) for us
    try:
        try:
            x = await st.decodes.run(
                decode_input, st.model, data, max_pixels=st.config.max_pixels, cost=st.decode_cost(data)
            )
        except ImageError as exc:
            raise _image_error(exc, source) from None
        del data
    except BaseException:
        st.batcher.unexpect()
        raise
    t_decode = time.perf_counter()
    probs, _, gids, gscores, pids, pscores, batch_size, batch_ms = await st.batcher.run(x, expected=True)
    t_infer = time.perf_counter()
    inside = st.inside.describe(st.inside.store(x)) if st.inside is not None else None
    predictions = st.model.top(probs, st.config.top_k)
    query = st.web_query(predictions[0]["index"])
    web_task = asyncio.ensure_future(st.web.search(query, page))
    similar = st.similar(gids, gscores, pids, pscores)
    t_similar = time.perf_counter()
    web, web_error = await web_task
    t_web = time.perf_counter()
    return JSONResponse(
        {
            "predictions": predictions,
            "query": query,
            "page": page,
            "web": web,
            "web_error": web_error,
            "similar": similar,
            "similar_error": st.similar_note(),
            "model": st.model_info,
            "inside": inside,
            "batch_size": batch_size,
            "timings_ms": {
                "read": _ms(t0, t_read),
                "decode": _ms(t_read, t_decode),
                "infer": _ms(t_decode, t_infer),
                "forward": round(batch_ms, 3),
                "similar": _ms(t_infer, t_similar),
                "web": _ms(t_infer, t_web),
                "total": _ms(t0, t_web),
            },
        }
    )


def _inside_layer(request: Request) -> str:
    layer = request.query_params.get("layer", "")
    if not layer or len(layer) > 200:
        raise ApiError(400, "layer must name a layer (1..200 characters), e.g. ?layer=conv1")
    return layer


def _visualize_error(exc: VisualizeError) -> ApiError:
    return ApiError(404 if str(exc).startswith("no layer named") else 400, str(exc))


async def inside_maps(request: Request) -> Response:
    """GET /api/inside/{id}/maps?layer=NAME: the PNG grid of that search's feature maps of one layer (one forward of
    the search's input on the inference thread, server.inside)."""
    st = _state(request)
    if st.inside is None:
        raise ApiError(404, "feature maps are not kept on this server (AppConfig.inside is off)")
    layer = _inside_layer(request)
    key = request.path_params["id"]
    try:
        st.inside.get(key)  # an unknown id or layer answers at once
        find_layer(st.model.net, layer)
        png = st.inside.cached_png(key, layer)
        if png is None:
            await _compiled(st)
            maps = await st.maps_gate.run(lambda: st.batcher.call(st.inside.maps, key, layer))
            png = await run_in_threadpool(st.inside.maps_png, maps)
            st.inside.keep_png(key, layer, png)
    except NotFound as exc:
        raise ApiError(404, str(exc)) from None
    except VisualizeError as exc:
        raise _visualize_error(exc) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})


async def filters(request: Request) -> Response:
    """GET /api/filters?layer=NAME: the PNG grid of a first-layer Convolution's filters."""
    st = _state(request)
    if st.inside is None:
        raise ApiError(404, "the inside view is turned off on this server (AppConfig.inside)")
    layer = _inside_layer(request)
    try:
        png = await run_in_threadpool(st.inside.filters_png, layer)
    except VisualizeError as exc:
        raise _visualize_error(exc) from None
    return Response(png, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})


async def web_more(request: Request) -> Response:
    st = _state(request)
    query = " ".join(request.query_params.get("q", "").split())
    if not query or len(query) > 200:
        raise ApiError(400, "q must be 1..200 characters: the words to search for")
    page = _page(request)
    web, web_error = await st.web.search(query, page)
    return JSONResponse({"query": query, "page": page, "web": web, "web_error": web_error})


def _gallery_or_404(request: Request) -> tuple[Gallery, int]:
    st = _state(request)
    if st.gallery is None:
        raise ApiError(404, "this server has no gallery")
    return st.gallery, _path_id(request)


async def gallery_thumb(request: Request) -> Response:
    gallery, i = _gallery_or_404(request)
    try:
        data, media = await run_in_threadpool(gallery.thumbnail, i)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    return Response(data, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


async def gallery_image(request: Request) -> Response:
    gallery, i = _gallery_or_404(request)
    try:
        body, media, name = await run_in_threadpool(gallery.image, i)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    disposition = "attachment" if request.query_params.get("download") == "1" else "inline"
    headers = {"Content-Disposition": f'{disposition}; filename="{name}"', "Cache-Control": "public, max-age=3600"}
    if isinstance(body, Path):
        return FileResponse(body, media_type=media, headers=headers)
    return Response(body, media_type=media, headers=headers)


# -- the personal gallery ----------------------------------------------------------------------------------------
def _personal(request: Request) -> PersonalGallery:
    personal = _state(request).personal
    if personal is None:
        raise ApiError(403, PERSONAL_OFF)
    return personal


def _item_json(item: dict) -> dict:
    return {**item, **_urls("personal", item["id"])}


def _stored(exc: OSError) -> ApiError:
    log.error("personal gallery: %s", exc)
    return ApiError(507, f"the server could not store the change: {exc.strerror or exc}")


async def personal_list(request: Request) -> Response:
    state = await run_in_threadpool(_personal(request).summary, with_items=True)
    state["items"] = [_item_json(it) for it in state["items"]]
    return JSONResponse(state)


@releases_body
async def personal_add(request: Request) -> Response:
    """One photo: the upload checks of /api/search, its features through the batcher, then stored."""
    st = _state(request)
    personal = _personal(request)
    if media_type(request) != "multipart/form-data":
        raise ApiError(415, 'upload the photo as multipart/form-data with a file field named "image"')
    try:
        await run_in_threadpool(personal.check_room, 0)  # full already: refuse before reading the body
        part = await st.read_upload(request)
        await run_in_threadpool(personal.check_room, len(part.data))
    except GalleryFull as exc:
        raise ApiError(409, str(exc)) from None
    cfg = st.config

    def decode() -> tuple:  # one job on the decode pool: the model's input and the stored photo
        x = decode_input(st.model, part.data, max_pixels=cfg.max_pixels)
        return x, prepare_photo(part.data, max_pixels=cfg.max_pixels)

    st.batcher.expect()
    try:
        try:
            x, photo = await st.decodes.run(decode, cost=st.decode_cost(part.data))
        except ImageError as exc:
            raise _image_error(exc, "the uploaded file") from None
    except BaseException:
        st.batcher.unexpect()
        raise
    _, feature, *_ = await st.batcher.run(x, expected=True)
    try:
        item = await run_in_threadpool(personal.add, photo, feature, name=part.filename)
    except GalleryFull as exc:
        raise ApiError(409, str(exc)) from None
    except OSError as exc:
        raise _stored(exc) from None
    summary = await run_in_threadpool(personal.summary)
    return JSONResponse({"item": _item_json(item), **summary}, status_code=201)


async def personal_remove(request: Request) -> Response:
    personal = _personal(request)
    i = _path_id(request)
    try:
        await run_in_threadpool(personal.remove, i)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    except OSError as exc:
        raise _stored(exc) from None
    return JSONResponse({"removed": 1, **await run_in_threadpool(personal.summary)})


async def personal_clear(request: Request) -> Response:
    personal = _personal(request)
    try:
        n = await run_in_threadpool(personal.clear)
    except OSError as exc:
        raise _stored(exc) from None
    return JSONResponse({"removed": n, **await run_in_threadpool(personal.summary)})


async def personal_thumb(request: Request) -> Response:
    personal = _personal(request)
    try:
        data = await run_in_threadpool(personal.thumbnail, _path_id(request))
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


async def personal_image(request: Request) -> Response:
    personal = _personal(request)
    try:
        data, media, name = await run_in_threadpool(personal.image, _path_id(request))
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None
    disposition = "attachment" if request.query_params.get("download") == "1" else "inline"
    headers = {"Content-Disposition": f'{disposition}; filename="{name}"', "Cache-Control": "private, max-age=3600"}
    return Response(data, media_type=media, headers=headers)


async def health(request: Request) -> Response:
    st = _state(request)
    return JSONResponse(
        {
            "status": "ok",
            "model": st.model.name,
            "gallery": st.gallery.summary() if st.gallery is not None else None,
            "gallery_note": st.gallery_note,
            "personal": await run_in_threadpool(st.personal.summary) if st.personal is not None else None,
            "web": st.web.status(),
            "batching": st.batcher.stats(),
            "limits": {"decode": st.decodes.stats(), "fetch": st.fetches.stats(), "bodies": st.bodies.stats()},
            "inside": st.inside.stats() if st.inside is not None else None,
        }
    )


async def models(request: Request) -> Response:
    st = _state(request)
    return JSONResponse({"models": [st.model_info], "default": st.model.name})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_spec(_state(request).config.max_upload))


async def index_page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


# -- errors and headers --------------------------------------------------------------------------------------------
async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, (ApiError, BodyRefused))
    headers = exc.headers if isinstance(exc, BodyRefused) else None  # Connection: close, the body left unread
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


async def _busy(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Busy)
    headers = {"Retry-After": str(exc.retry_after), **CLOSE}  # maybe refused before its body was read
    return JSONResponse({"error": str(exc)}, status_code=503, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    words = {404: f"not found: {request.url.path}", 405: f"method {request.method} is not allowed here"}
    return JSONResponse(
        {"error": words.get(exc.status_code, str(exc.detail))}, status_code=exc.status_code, headers=exc.headers
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    # Not logged here: Starlette re-raises the exception after this answer and the server (uvicorn) logs its
    # traceback; logging it here too printed every traceback twice.
    return JSONResponse({"error": "internal server error; see the server log"}, status_code=500)


CSP = (
    "default-src 'self'; img-src 'self' data: blob: https: http:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


class _SecurityHeaders:
    """Pure ASGI middleware adding nosniff, a Content-Security-Policy and a referrer policy to every response."""

    def __init__(self, app: Callable) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", CSP.encode()),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _compiled(st: _State) -> None:
    """Wait, without a thread, for AppConfig.inside_ready (crema serve: the kernels of the maps' plan and of
    infer_any's copies, compiled in the background)."""
    ready = st.config.inside_ready
    if ready is not None and not ready.done():
        await asyncio.shield(asyncio.wrap_future(ready))


async def _warm_later(st: _State) -> None:
    """After start-up, once the background compiles are done (`crema serve`), between searches: the maps copy of the
    net made and run once, and the copies micro-batches run on made and their replays recorded
    (Model.warm_steps), so that early requests do not pay for them."""
    try:
        await _compiled(st)
        if st.inside is not None:
            await st.batcher.call(st.inside.warm)
        if st.batcher.enabled:
            for step in st.model.warm_steps(st.batcher.max_batch):
                await st.batcher.call(step)
    except RuntimeError:  # the batcher closed: shutting down
        pass
    except Exception:  # a request meets it again and answers with it
        logging.getLogger("crema.warm").warning("warming the model's copies failed", exc_info=True)


def create_app(
    model: Model,
    *,
    gallery: Gallery | None = None,
    gallery_note: str | None = None,
    personal: PersonalGallery | None = None,
    web: WebSearch | None = None,
    config: AppConfig | None = None,
    fetcher: Callable[..., bytes] | None = None,
) -> Starlette:
    """The Starlette app serving `model` (see the module docstring).

    gallery: ranked by cosine similarity (None: `similar` is [] and `similar_error` gives `gallery_note`).
    personal: the personal gallery, ranked beside `gallery` (None: off, its routes answer 403).
    web: the web search (None: off, every answer says so in `web_error`). fetcher(url, *, max_bytes, timeout,
    allow_private) -> bytes fetches {"url"} queries (default scraper.fetch.fetch_url).
    """
    config = config or AppConfig()
    web = web or WebSearch(None)
    st = _State(model, gallery, gallery_note, personal, web, config, fetcher or _default_fetcher)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        return_large_frees_to_os()
        if config.warmup:  # JIT / cache load before the first user waits on it
            await st.batcher.run(np.zeros(model.input_shape, dtype=np.float32))
            st.batcher.sizes.clear()
        warming = asyncio.ensure_future(_warm_later(st)) if config.warmup else None
        try:
            yield
        finally:
            if warming is not None:
                warming.cancel()
            st.batcher.close()
            st.web.close()
            st.decodes.close()
            st.fetches.close()

    routes = [
        Route("/", index_page, methods=["GET"]),
        Route("/api/search", search, methods=["POST"]),
        Route("/api/web", web_more, methods=["GET"]),
        Route("/api/inside/{id}/maps", inside_maps, methods=["GET"]),
        Route("/api/filters", filters, methods=["GET"]),
        Route("/api/gallery/{id}/thumb", gallery_thumb, methods=["GET"]),
        Route("/api/gallery/{id}/image", gallery_image, methods=["GET"]),
        Route("/api/personal", personal_list, methods=["GET"]),
        Route("/api/personal", personal_add, methods=["POST"]),
        Route("/api/personal", personal_clear, methods=["DELETE"]),
        Route("/api/personal/{id}", personal_remove, methods=["DELETE"]),
        Route("/api/personal/{id}/thumb", personal_thumb, methods=["GET"]),
        Route("/api/personal/{id}/image", personal_image, methods=["GET"]),
        Route("/api/health", health, methods=["GET"]),
        Route("/api/models", models, methods=["GET"]),
        Route("/api/openapi.json", openapi, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            ApiError: _api_error,
            BodyRefused: _api_error,
            Busy: _busy,
            HTTPException: _http_error,
            Exception: _server_error,
        },
    )
    app.add_middleware(_SecurityHeaders)
    app.state.crema = st
    return app
