"""The personal gallery: photos a person adds through the page, indexed with the served model's features and
kept in the cache folder across restarts. Similar images come from it as well as from `--gallery`.

    personal = open_personal(model, cache_dir, max_photos=2000, max_bytes=500_000_000)
    photo = prepare_photo(data, max_pixels=40_000_000)   # decoded once to check it, thumbnail, format (ImageError)
    item = personal.add(photo, feature, name="cat.jpg")   # feature (D,) from the model; GalleryFull past a limit
    ids, scores = personal.search_batch(queries, k=12)    # queries (N, D) -> photo ids and cosine scores (N, k')
    personal.remove(7); personal.clear()

One folder per model fingerprint, so features of another model are never mixed in:

    <cache>/personal/<fingerprint[:16]>/
        manifest.json      {"format": "crema-personal", "version": 1, "model": {"fingerprint", "name",
                           "feature_blob", "dim", "preset"}, "next_id": N, "revision": R, "items": [{"id", "name",
                           "media_type", "width", "height", "bytes", "added"}]}
        photos/<id>.<ext>  the uploaded bytes as sent (after the upload checks); ext from the decoded format
        thumbs/<id>.jpg    JPEG thumbnail, at most THUMB_SIZE pixels a side
        features/<id>.npy  (D,) float32, L2-normalised: the model's features of the photo
        .lock              flock'ed while the folder changes

File names come from the integer id and the media type only; the client's file name is kept as a display
string ("name") and never touches a path. An item's "bytes" counts its three files; `max_bytes` bounds the
sum over all items, `max_photos` their count.

Crash safety: every file is written under a temporary name, flushed to disk and renamed over its final name,
so no file is ever half-written. An add writes the photo, thumbnail and features first and the manifest last;
a remove writes the manifest first and deletes the files after. The manifest thus lists only whole files;
files it does not list (a crash between the two steps) are deleted when the folder is opened. Ids are never
reused (next_id only grows), so a thumbnail URL cached by a browser never shows another photo. "revision"
counts the manifest's writes (every add, remove and clear, from any process): summaries carry it, so a client
whose concurrent requests' answers arrive out of order keeps the newest counts.

Concurrency: changes hold a lock per instance (the server's thread pool) and an flock on .lock (another
process serving the same cache folder), and first re-read the manifest when another process has replaced it.
Ranking reads a snapshot (ids, features) that changes replace, or extend past its end, never alter, so a
search never waits for an add.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from net import paths
from net.paths import fsync_dir, write_atomic
from net.preprocess import load_image

from .gallery import model_block, rank_features
from .model import ALLOWED_FORMATS, Model

try:
    import fcntl
except ImportError:  # not POSIX: the in-process lock alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["THUMB_SIZE", "GalleryFull", "PersonalGallery", "Photo", "clean_name", "open_personal", "prepare_photo"]

log = logging.getLogger(__name__)
FORMAT = "crema-personal"
VERSION = 1
THUMB_SIZE = 160
NAME_CHARS = 120
# Pillow format -> (media type, file suffix): the only files this folder holds.
MEDIA = {
    "JPEG": ("image/jpeg", ".jpg"),
    "PNG": ("image/png", ".png"),
    "GIF": ("image/gif", ".gif"),
    "BMP": ("image/bmp", ".bmp"),
    "WEBP": ("image/webp", ".webp"),
}
_SUFFIX = dict(MEDIA.values())  # media type -> suffix
_SUBDIRS = ("photos", "thumbs", "features")


class GalleryFull(ValueError):
    """An add that would pass max_photos or max_bytes; the message says which."""


@dataclass(frozen=True)
class Photo:
    """An upload that decoded as an allowed image: its bytes as sent, a JPEG thumbnail, its format and size
    (after EXIF rotation)."""

    data: bytes
    thumb: bytes
    media_type: str
    width: int
    height: int


def prepare_photo(data: bytes, *, max_pixels: int = 40_000_000, thumb_size: int = THUMB_SIZE) -> Photo:
    """Decode `data` with the same checks as a search (allowed formats, pixel limit, truncation; raises
    net.preprocess.ImageError) and make its thumbnail."""
    img = load_image(data, max_pixels=max_pixels, allowed_formats=ALLOWED_FORMATS)
    with Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS)) as raw:  # header only: the format
        media_type = MEDIA[raw.format][0]
    width, height = img.size
    img.thumbnail((thumb_size, thumb_size))  # in place: this decode is ours alone
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)  # "RGB" or "L": load_image normalises the mode
    return Photo(data, buf.getvalue(), media_type, width, height)


def clean_name(filename: str | None) -> str | None:
    """A client's file name as a display string: its last path component, without control characters, at most
    NAME_CHARS characters; None when nothing is left."""
    if not filename:
        return None
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return base[:NAME_CHARS] or None


def _size(n: int) -> str:
    """Bytes for people: "12.3 MB", "456.7 kB", "89 bytes"."""
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB" if n >= 1000 else f"{n} bytes"


def _npy(feature: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, feature, allow_pickle=False)
    return buf.getvalue()


class PersonalGallery:
    """A personal gallery folder (see the module docstring). Build it with `open_personal`."""

    def __init__(self, path: str | Path, model: dict, *, max_photos: int = 2000, max_bytes: int = 500_000_000) -> None:
        """path: the folder (created if missing); model: `gallery.model_block(model)` of the served model."""
        if max_photos < 1 or max_bytes < 1:
            raise ValueError(f"personal gallery: max_photos and max_bytes must be >= 1, got {max_photos}, {max_bytes}")
        self.path = Path(path)
        self.model = model
        self.dim = int(model["dim"])
        self.max_photos = max_photos
        self.max_bytes = max_bytes
        self._lock = threading.RLock()
        self._items: dict[int, dict] = {}  # id -> manifest item, ascending ids (= snapshot row order)
        self._next_id = 0
        self._revision = 0  # the manifest's writes so far
        self._bytes = 0
        self._key: tuple | None = None  # (inode, mtime, size) of the manifest last read or written
        self._set_rows(np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32))
        for sub in _SUBDIRS:
            (self.path / sub).mkdir(parents=True, exist_ok=True)
        with self._locked():
            if self._key is None:  # a new folder
                self._write_manifest(list(self._items.values()), self._next_id)
            self._remove_orphans()

    # -- reading ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes

    def items(self) -> list[dict]:
        """The photos, oldest first: [{"id", "name", "media_type", "width", "height", "bytes", "added"}]."""
        with self._lock:
            self._sync()
            return [dict(it) for it in self._items.values()]

    def summary(self, *, with_items: bool = False) -> dict:
        """{"count", "bytes", "max_photos", "max_bytes", "revision"} (+ "items": `items()`), read together under
        the lock; a larger revision is a later state of the folder."""
        with self._lock:
            self._sync()
            out = {
                "count": len(self._items),
                "bytes": self._bytes,
                "max_photos": self.max_photos,
                "max_bytes": self.max_bytes,
                "revision": self._revision,
            }
            if with_items:
                out["items"] = [dict(it) for it in self._items.values()]
            return out

    def search_batch(self, queries: np.ndarray, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """queries (N, D) L2-normalised -> (photo ids (N, k'), scores (N, k')), k' = min(k, len(self)), best
        first, ties by lower id. Reads the current snapshot without locking."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"personal gallery: queries have shape {queries.shape}, expected (N, {self.dim})")
        ids, feats = self._snapshot
        rows, scores = rank_features(feats, queries, k)
        return ids[rows], scores

    def hits(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One row of `search_batch` as [{"id", "score", "name"}], leaving out photos removed since."""
        out = []
        for i, s in zip(ids.tolist(), scores.tolist()):
            item = self._items.get(i)
            if item is not None:
                out.append({"id": i, "score": float(s), "name": item.get("name")})
        return out

    def _item(self, i: int) -> dict:
        item = self._items.get(i)
        if item is None:
            raise KeyError(f"no photo {i} in the personal gallery")
        return item

    def thumbnail(self, i: int) -> bytes:
        """The JPEG thumbnail of photo i; KeyError if there is no such photo."""
        self._item(i)
        try:
            return self._file("thumbs", i, "image/jpeg").read_bytes()
        except OSError:
            raise KeyError(f"photo {i} of the personal gallery has no thumbnail") from None

    def image(self, i: int) -> tuple[bytes, str, str]:
        """(the photo's bytes as uploaded, media type, download name) of photo i; KeyError if there is none."""
        item = self._item(i)
        path = self._file("photos", i, item["media_type"])
        try:
            return path.read_bytes(), item["media_type"], f"photo-{i}{path.suffix}"
        except OSError:
            raise KeyError(f"photo {i} of the personal gallery is not available") from None

    # -- changing --------------------------------------------------------------------------------------
    def check_room(self, size: int) -> None:
        """Raise GalleryFull if one more photo of `size` stored bytes would pass a limit."""
        with self._lock:
            self._sync()
            self._check_room(size)

    def _check_room(self, size: int) -> None:
        if len(self._items) >= self.max_photos:
            raise GalleryFull(
                f"the personal gallery is full: it holds {len(self._items):,} photos, the limit is "
                f"{self.max_photos:,}; remove some photos first"
            )
        if self._bytes + size > self.max_bytes:
            raise GalleryFull(
                f"the personal gallery is full: this photo needs {_size(size)}, {_size(self.max_bytes - self._bytes)} "
                f"of the {_size(self.max_bytes)} limit is left; remove some photos first"
            )

    def add(self, photo: Photo, feature: np.ndarray, *, name: str | None = None) -> dict:
        """Store `photo` with its features (D,) float32 (L2-normalised, from the served model); returns the
        new item. Raises GalleryFull past a limit (nothing is written then), OSError when the disk fails."""
        feature = np.asarray(feature)
        if feature.shape != (self.dim,) or feature.dtype != np.float32:
            raise ValueError(
                f"personal gallery: feature must be ({self.dim},) float32, got {feature.shape} {feature.dtype}"
            )
        npy = _npy(feature)
        size = len(photo.data) + len(photo.thumb) + len(npy)
        with self._locked():
            self._check_room(size)
            i = self._next_id
            files = [
                (self._file("photos", i, photo.media_type), photo.data),
                (self._file("thumbs", i, "image/jpeg"), photo.thumb),
                (self._file("features", i), npy),
            ]
            item = {
                "id": i,
                "name": clean_name(name),
                "media_type": photo.media_type,
                "width": photo.width,
                "height": photo.height,
                "bytes": size,
                "added": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            try:
                for path, data in files:
                    write_atomic(path, data)
                self._write_manifest([*self._items.values(), item], i + 1)
            except BaseException:
                for path, _ in files:
                    with contextlib.suppress(OSError):
                        path.unlink()
                raise
            self._items[i] = item
            self._next_id = i + 1
            self._bytes += size
            self._append_row(i, feature)
            return dict(item)

    def remove(self, i: int) -> dict:
        """Remove photo i (KeyError if there is none); returns its item."""
        with self._locked():
            item = self._item(i)
            self._write_manifest([it for k, it in self._items.items() if k != i], self._next_id)
            del self._items[i]
            self._bytes -= item["bytes"]
            ids, feats = self._snapshot
            keep = ids != i
            self._set_rows(ids[keep], feats[keep])
            self._delete_files(i, item)
            return dict(item)

    def clear(self) -> int:
        """Remove every photo; returns how many there were."""
        with self._locked():
            items = list(self._items.values())
            self._write_manifest([], self._next_id)
            self._items = {}
            self._bytes = 0
            self._set_rows(np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32))
            for item in items:
                self._delete_files(item["id"], item)
            return len(items)

    # -- the folder ------------------------------------------------------------------------------------
    def _file(self, sub: str, i: int, media_type: str | None = None) -> Path:
        suffix = ".npy" if sub == "features" else _SUFFIX.get(media_type or "", ".bin")
        return self.path / sub / f"{int(i)}{suffix}"

    def _delete_files(self, i: int, item: dict) -> None:
        for sub, media in (("photos", item["media_type"]), ("thumbs", "image/jpeg"), ("features", None)):
            with contextlib.suppress(OSError):
                self._file(sub, i, media).unlink()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The instance lock, then the folder's flock, then the manifest re-read if another process changed it."""
        with self._lock:
            fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                self._sync()
                yield
            finally:
                os.close(fd)  # closing releases the flock

    def _sync(self) -> None:
        """Re-read manifest.json unless it is the file this instance last read or wrote."""
        try:
            f = open(self.path / "manifest.json", "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            return
        with f:
            st = os.fstat(f.fileno())
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key == self._key:
                return
            raw = f.read()
        self._load(raw)
        self._key = key

    def _load(self, raw: bytes) -> None:
        where = f"personal gallery {self.path}"
        try:
            manifest = json.loads(raw)
            if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
                raise ValueError(f"not a {FORMAT} v{VERSION} manifest")
            items = [dict(it, id=int(it["id"]), bytes=int(it["bytes"])) for it in manifest["items"]]
            next_id = int(manifest["next_id"])
            revision = int(manifest.get("revision", 0))  # absent in manifests written before it was added
            fingerprint = manifest["model"]["fingerprint"]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(
                f"{where}: manifest.json cannot be read ({exc}); move the folder away to start an empty one"
            ) from None
        if fingerprint != self.model["fingerprint"]:
            raise ValueError(f"{where} holds features of another model (fingerprint {fingerprint[:16]})")
        known_ids, known_feats = self._snapshot
        known = {int(i): r for r, i in enumerate(known_ids.tolist())}
        kept, feats = [], []
        for it in sorted(items, key=lambda it: it["id"]):
            i = it["id"]
            if i in known:
                feature = known_feats[known[i]]
            else:
                try:
                    feature = np.load(self._file("features", i), allow_pickle=False)
                except (OSError, ValueError) as exc:
                    log.warning("%s: leaving out photo %d, its features cannot be read (%s)", where, i, exc)
                    continue
                if feature.shape != (self.dim,) or feature.dtype != np.float32:
                    log.warning("%s: leaving out photo %d, its features have shape %s", where, i, feature.shape)
                    continue
            if it.get("media_type") not in _SUFFIX:
                log.warning("%s: leaving out photo %d, unknown media type %r", where, i, it.get("media_type"))
                continue
            kept.append(it)
            feats.append(feature)
        self._items = {it["id"]: it for it in kept}
        self._next_id = max([next_id, *(i + 1 for i in self._items)])
        self._revision = revision
        self._bytes = sum(it["bytes"] for it in kept)
        ids = np.array(list(self._items), dtype=np.int64)
        self._set_rows(ids, np.stack(feats) if feats else np.zeros((0, self.dim), dtype=np.float32))

    def _write_manifest(self, items: list[dict], next_id: int) -> None:
        revision = self._revision + 1
        manifest = {
            "format": FORMAT, "version": VERSION, "model": self.model, "next_id": next_id, "revision": revision,
            "items": items,
        }  # fmt: skip
        path = self.path / "manifest.json"
        write_atomic(path, json.dumps(manifest, separators=(",", ":")).encode())
        self._revision = revision
        fsync_dir(self.path)
        st = os.stat(path)  # under the flock: nobody else replaced it since
        self._key = (st.st_ino, st.st_mtime_ns, st.st_size)

    def _remove_orphans(self) -> None:
        """Delete this folder's files that the manifest does not list (a crash between writing them and the
        manifest, or between the manifest and deleting them) and leftover temporary files. Under the flock."""
        for sub in ("", *_SUBDIRS):
            for entry in (self.path / sub).iterdir():
                name = entry.name
                stem, dot, _ = name.partition(".")
                temporary = name.startswith(".") and name.endswith(".tmp")  # net.paths.write_atomic's
                ours = stem.isdigit() and dot and sub != ""
                if temporary or (ours and int(stem) not in self._items):
                    with contextlib.suppress(OSError):
                        entry.unlink()

    # -- the ranking snapshot --------------------------------------------------------------------------
    # Buffers with spare rows: an add writes row n and publishes views [:n + 1]; earlier views [:n] share the
    # buffer but never see the new row. Removals and growth build new buffers, so a view never changes.
    def _set_rows(self, ids: np.ndarray, feats: np.ndarray) -> None:
        cap = max(16, len(ids))
        self._ids_buf = np.zeros(cap, dtype=np.int64)
        self._feat_buf = np.zeros((cap, self.dim), dtype=np.float32)
        self._ids_buf[: len(ids)] = ids
        self._feat_buf[: len(ids)] = feats
        self._n = len(ids)
        self._snapshot = (self._ids_buf[: self._n], self._feat_buf[: self._n])

    def _append_row(self, i: int, feature: np.ndarray) -> None:
        n = self._n
        if n == len(self._ids_buf):
            ids, feats = self._ids_buf, self._feat_buf
            self._ids_buf = np.zeros(2 * n, dtype=np.int64)
            self._feat_buf = np.zeros((2 * n, self.dim), dtype=np.float32)
            self._ids_buf[:n] = ids[:n]
            self._feat_buf[:n] = feats[:n]
        self._ids_buf[n] = i
        self._feat_buf[n] = feature
        self._n = n + 1
        self._snapshot = (self._ids_buf[: self._n], self._feat_buf[: self._n])


def open_personal(
    model: Model, cache_dir: str | Path | None = None, *, max_photos: int = 2000, max_bytes: int = 500_000_000
) -> PersonalGallery:
    """The personal gallery of `model` in cache_dir/personal/<fingerprint[:16]> (cache_dir default: $CREMA_CACHE,
    else ~/.cache/crema, as for gallery indexes)."""
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    path = cache / "personal" / model.fingerprint[:16]
    return PersonalGallery(path, model_block(model), max_photos=max_photos, max_bytes=max_bytes)
