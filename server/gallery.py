"""Local image gallery: penultimate-layer features of many images, searched by cosine similarity with FAISS.

    gallery = build_index("photos/", model, "photos/.crema-index")     # `crema index photos/` (server.indexing)
    gallery = Gallery.load("photos/.crema-index", model)                 # refuses another model's index
    gallery.search(feature, k=12)                                        # [{"id", "score", "label"}], best first
    rows, scores = rank_features(features, queries, k=12)                # brute force, shared with server.personal

An index is a folder written by `server.indexing` (its docstring gives the layout: manifest.json, feature shards,
thumbnails, the FAISS vector index). `Gallery.load` reads the manifest, memory-maps the vector index
(`server.vector_index`; several server processes share its pages) and reads a shard's rows only when one of its
items is asked for (a small cache of shards), so a gallery of millions of images opens in a second or so and holds
little beyond the index. Ids are the positions of the readable images in shard order; `items[i]` is
{"id", "path", "label", "thumb"}.

Folder indexes walk DIR recursively (hidden folders skipped, symlinks not followed) for .jpg .jpeg .png .gif .bmp
.webp files in sorted order; an item's label is its top-level sub-folder's name (ImageFolder layout: DIR/cat/1.jpg ->
"cat"), or null for files directly in DIR. Unreadable images are recorded as error rows and listed in the manifest
("skipped"). A file is served only from inside its source folder (the path is resolved, symlinks included, and must
stay under the root); URL items have thumbnails only.

An index of the old format (version 1: one features.npy and the items in the manifest) is refused with a message
to rebuild it; the cached MNIST and folder galleries are rebuilt on their own.

The default gallery of a 1x28x28 model (LeNet) is the 10,000 MNIST test digits (`net.datasets.load_mnist`),
indexed on first use into the cache folder under a name keyed by the model's fingerprint.
"""

from __future__ import annotations

import io
import json
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from net import paths

from .indexing import (
    FORMAT,
    IMAGE_SUFFIXES,
    VERSION,
    find_images,
    index_arrays,
    index_source,
    model_block,
    read_source,
    shard_features,
    shard_rows,
)
from .model import Model
from .vector_index import VectorIndex

__all__ = [
    "IMAGE_SUFFIXES",
    "Gallery",
    "build_array_index",
    "build_index",
    "find_images",
    "mnist_gallery",
    "model_block",
    "open_gallery",
    "rank_features",
]

INDEX_DIRNAME = ".crema-index"
SHARD_CACHE = 64  # shards whose rows stay in memory (a shard is ~100 bytes a row)


def _within(root: Path, rel: str) -> Path | None:
    """root/rel resolved, or None when it leaves root (.., absolute parts, symlinks pointing out)."""
    base = root.resolve()
    path = (base / rel).resolve()
    return path if path.is_relative_to(base) and path != base else None


def rank_features(features: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """features (G, D), queries (N, D), both with L2-normalised rows -> (rows (N, k'), scores (N, k')),
    k' = min(k, G): the k rows of `features` with the highest cosine similarity to each query, best first, ties
    by lower row. One (N, D) x (D, G) product for the whole batch; the top k by argpartition, then sorted."""
    n, g = len(queries), len(features)
    k = max(0, min(k, g))
    if k == 0 or n == 0:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32)
    scores = queries.astype(np.float32, copy=False) @ features.T  # (N, G)
    if k < g:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(g), scores.shape).copy()
    top = np.take_along_axis(scores, part, axis=1)
    rows = np.empty((n, k), dtype=np.int64)
    for r in range(n):  # k <= a few dozen: order each row's candidates by (-score, row)
        order = np.lexsort((part[r], -top[r]))
        rows[r] = part[r][order]
    return rows, np.take_along_axis(scores, rows, axis=1)


class _Items(Sequence):
    """items[i] -> {"id", "path", "label", "thumb"} of gallery id i, read from its shard's rows on demand (the
    last SHARD_CACHE shards kept)."""

    def __init__(self, path: Path, shards: list[dict]) -> None:
        self.path = path
        self.shards = shards
        self.starts = np.cumsum([0] + [s["ok"] for s in shards])
        self._cache: OrderedDict[int, list[dict]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _shard(self, s: int) -> list[dict]:
        if s in self._cache:
            self._cache.move_to_end(s)
            return self._cache[s]
        rows = shard_rows(self.path, self.shards[s]["no"])
        if rows is None:
            raise KeyError(f"gallery {self.path}: shard {self.shards[s]['no']} is missing")
        ok = [
            {"id": int(self.starts[s]) + k, "path": r["path"], "label": r["label"], "thumb": r["thumb"]}
            for k, r in enumerate(r for r in rows if not r["error"])
        ]
        self._cache[s] = ok
        if len(self._cache) > SHARD_CACHE:
            self._cache.popitem(last=False)
        return ok

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self._shard(s)[i - int(self.starts[s])]


class Gallery:
    """A loaded index (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict, vectors: VectorIndex, images: np.ndarray | None) -> None:
        self.path = path
        self.manifest = manifest
        self.vectors = vectors
        self.images = images
        self.items = _Items(path, manifest["shards"])
        root = manifest.get("source", {}).get("root")
        self.root = Path(root) if root else None
        self._features: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None, *, mmap: bool = True) -> Gallery:
        """Read an index folder; with `model`, refuse an index built with another model or weights. mmap: map the
        vector index's flat codes from the file (shared between processes) instead of reading them."""
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"gallery index {path}: cannot read manifest.json ({exc})") from None
        if manifest.get("format") != FORMAT:
            raise ValueError(f"gallery index {path}: not a {FORMAT} manifest")
        if manifest.get("version") != VERSION:
            raise ValueError(
                f"gallery index {path} has the old format (version {manifest.get('version')}, one NumPy matrix); "
                f"rebuild it with `crema index SOURCE --out {path} --restart`"
            )
        if model is not None and manifest["model"]["fingerprint"] != model.fingerprint:
            raise ValueError(
                f"gallery index {path} was built with another model or weights "
                f"(fingerprint {manifest['model']['fingerprint'][:16]}, serving {model.fingerprint[:16]}); "
                f"rebuild it with `crema index`"
            )
        meta = manifest.get("vectors") or {}
        if (
            sum(s["ok"] for s in manifest.get("shards", [])) != manifest.get("count")
            or meta.get("count") != manifest["count"]
        ):
            raise ValueError(f"gallery index {path}: the manifest's shard and vector counts disagree; rebuild it")
        vectors = VectorIndex.load(path / meta["file"], meta, mmap=mmap)
        images = None
        if manifest.get("thumbs") == "array":
            images = np.load(path / "images.npy", allow_pickle=False, mmap_mode="r")
        return cls(path, manifest, vectors, images)

    # -- ranking ---------------------------------------------------------------------------------------
    def search_batch(self, queries: np.ndarray, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """queries: (N, D) L2-normalised features -> (ids (N, k'), scores (N, k')) with k' = min(k, len(self)),
        each row best first (ties by lower id among the k' found). Exact (FAISS flat) for small galleries,
        approximate beyond (recall@10 in manifest["vectors"]); an approximate row may end in id -1 (fewer hits)."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"gallery {self.path}: queries have shape {queries.shape}, expected (N, {self.dim})")
        return self.vectors.search(queries, k)

    def hits(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One row of `search_batch` as [{"id", "score", "label"}] (ids of -1, no hit, dropped)."""
        return [
            {"id": int(i), "score": float(s), "label": self.items[int(i)].get("label")}
            for i, s in zip(ids, scores)
            if i >= 0
        ]

    def search(self, query: np.ndarray, k: int = 12) -> list[dict]:
        """query: (D,) L2-normalised feature -> the k items with the highest cosine similarity,
        [{"id", "score", "label"}] best first (ties by lower id)."""
        if query.shape != (self.dim,):
            raise ValueError(f"gallery {self.path}: query feature has shape {query.shape}, expected ({self.dim},)")
        ids, scores = self.search_batch(query[None], k)
        return self.hits(ids[0], scores[0])

    @property
    def dim(self) -> int:
        return int(self.manifest["model"]["dim"])

    @property
    def features(self) -> np.ndarray:
        """(N, D) float32: every item's feature, read from the shards (all in memory: for small galleries and
        tests; searching uses the vector index)."""
        if self._features is None:
            chunks = [shard_features(self.path, s["no"]) for s in self.manifest["shards"] if s["ok"]]
            self._features = np.concatenate(chunks).astype(np.float32, copy=False)
        return self._features

    # -- pictures --------------------------------------------------------------------------------------
    def _item(self, i: int) -> dict:
        if not 0 <= i < len(self.items):
            raise KeyError(f"no gallery item {i} (0..{len(self.items) - 1})")
        return self.items[i]

    def thumbnail(self, i: int) -> tuple[bytes, str]:
        """(encoded thumbnail, media type) of item i; KeyError if there is none."""
        item = self._item(i)
        if self.images is not None:
            a = np.asarray(self.images[i])
            scale = max(1, 96 // max(a.shape[:2]))
            img = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.Resampling.NEAREST)
            return _png(img), "image/png"
        thumb = item.get("thumb")
        path = _within(self.path, thumb) if thumb else None
        if path is None or not path.is_file():
            raise KeyError(f"gallery item {i} has no thumbnail")
        return path.read_bytes(), "image/png" if path.suffix == ".png" else "image/jpeg"

    def image(self, i: int) -> tuple[bytes | Path, str, str]:
        """(original file path or PNG bytes, media type, download name) of item i; KeyError if unavailable."""
        item = self._item(i)
        if self.images is not None:
            return _png(Image.fromarray(np.asarray(self.images[i]))), "image/png", f"gallery-{i}.png"
        rel = item.get("path")
        path = _within(self.root, rel) if (self.root and rel and not rel.startswith(("http://", "https://"))) else None
        if path is None or not path.is_file():
            raise KeyError(f"gallery item {i}: original image is not available")
        media = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif"}
        media.update({".bmp": "image/bmp", ".webp": "image/webp"})
        return path, media.get(path.suffix.lower(), "application/octet-stream"), f"gallery-{i}{path.suffix.lower()}"

    def summary(self) -> dict:
        return {
            "count": len(self.items),
            "dim": self.dim,
            "source": self.manifest.get("source", {}).get("kind"),
            "name": self.manifest.get("name"),
        }


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# -- building ----------------------------------------------------------------------------------------------
def build_index(
    root: str | Path,
    model: Model,
    out: str | Path | None = None,
    *,
    batch: int = 32,
    thumb_size: int = 128,
    progress: bool = True,
    name: str | None = None,
    **options,
) -> Gallery:
    """Index SOURCE `root` (a folder, glob or list: server.indexing.read_source) into `out` (default
    root/.crema-index for a folder), `batch` images per forward pass; `options` go to server.indexing.index_source
    (engine, shard_size, memory_budget, restart, ...). Returns the loaded Gallery."""
    source = read_source(root)
    if out is None:
        if source.kind != "folder":
            raise ValueError(f"SOURCE {root} is not a folder: pass --out INDEX")
        out = Path(root) / INDEX_DIRNAME
    path, _note = index_source(
        source, model, out, batch=batch, thumb_size=thumb_size, progress=progress, name=name, **options
    )
    return Gallery.load(path, model)


def build_array_index(
    images: np.ndarray,
    labels: np.ndarray | list | None,
    model: Model,
    out: str | Path,
    *,
    name: str,
    batch: int = 256,
    progress: bool = True,
) -> Gallery:
    """Index in-memory pictures: images (N, H, W) uint8 (e.g. MNIST digits), labels (N,) or None."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if images.ndim != 3 or not len(images):
        raise ValueError(f"build_array_index: expected images (N, H, W) uint8 with N >= 1, got shape {images.shape}")
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"build_array_index: {len(images)} images but {len(labels)} labels")
    return Gallery.load(index_arrays(images, labels, model, out, name=name, batch=batch, progress=progress), model)


# -- choosing the gallery to serve ---------------------------------------------------------------------------
def _load_mnist_test() -> tuple[np.ndarray, np.ndarray]:
    from net.datasets import load_mnist  # the MNIST files ship under data/mnist

    return load_mnist("test")


def mnist_gallery(
    model: Model,
    cache_dir: str | Path,
    *,
    loader: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
    progress: bool = True,
) -> Gallery:
    """The MNIST test digits indexed with `model`, cached in cache_dir/galleries/mnist-test-<fingerprint>."""
    out = Path(cache_dir) / "galleries" / f"mnist-test-{model.fingerprint[:16]}"
    if (out / "manifest.json").is_file():
        try:
            return Gallery.load(out, model)
        except (ValueError, OSError) as exc:
            print(f"crema: rebuilding the cached gallery {out}: {exc}", file=sys.stderr)
    images, labels = (loader or _load_mnist_test)()
    return build_array_index(images, labels, model, out, name="MNIST test digits", progress=progress)


def open_gallery(
    model: Model,
    spec: str | Path | None,
    cache_dir: str | Path | None = None,
    *,
    progress: bool = True,
    mnist_loader: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None,
) -> tuple[Gallery | None, str | None]:
    """The gallery `crema serve` uses, and a note when there is none:

    spec an index folder (has manifest.json)  -> loaded; must match the model's fingerprint
    spec an image folder                      -> its DIR/.crema-index if it matches the model, else indexed
                                                 into the cache (cache_dir/galleries/folder-<hash>)
    spec None, 1x28x28 input (LeNet)          -> the MNIST test digits (cached); None + note if unavailable
    spec None, other models                   -> None + note ("pass --gallery DIR")
    """
    cache = Path(cache_dir) if cache_dir is not None else paths.cache_dir()
    if spec is not None:
        path = Path(spec)
        if (path / "manifest.json").is_file():
            return Gallery.load(path, model), None
        if not path.is_dir():
            raise ValueError(f"--gallery {path}: not a folder")
        local = path / INDEX_DIRNAME
        if (local / "manifest.json").is_file():
            try:
                return Gallery.load(local, model), None
            except ValueError as exc:
                print(f"crema: not using {local}: {exc}", file=sys.stderr)
        import hashlib

        key = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
        out = cache / "galleries" / f"folder-{key}-{model.fingerprint[:12]}"
        if (out / "manifest.json").is_file():
            try:
                return Gallery.load(out, model), None
            except ValueError:
                pass
        return build_index(path, model, out, progress=progress), None
    if model.input_shape == (1, 28, 28):
        try:
            return mnist_gallery(model, cache, loader=mnist_loader, progress=progress), None
        except (ImportError, OSError, ValueError) as exc:
            return (
                None,
                f"the default MNIST gallery is unavailable ({exc}); run `crema data mnist` or pass --gallery DIR",
            )
    return None, "no gallery for this model: pass --gallery DIR (see `crema index`)"
