"""Local image gallery: penultimate-layer features of many images, ranked by cosine similarity.

    gallery = build_index("photos/", model, "photos/.crema-index")     # `crema index photos/`
    gallery = Gallery.load("photos/.crema-index", model)                 # refuses another model's index
    gallery.search(feature, k=12)                                        # [{"id", "score", "label"}], best first
    rows, scores = rank_features(features, queries, k=12)                # the ranking, shared with server.personal

An index is a folder:

    manifest.json   {"format": "crema-gallery", "version": 1, "model": {"fingerprint", "name", "feature_blob",
                    "dim"}, "source": {"kind": "folder" | "array", "root": str | null}, "count": N,
                    "thumbs": "files" | "array", "items": [{"id", "path", "label", "thumb"}], "skipped": [...]}
    features.npy    (N, D) float32, rows L2-normalised, so cosine similarity is a dot product
    thumbs/         one small JPEG (colour) or PNG (grayscale) per item, named by id ("thumbs": "files")
    images.npy      (N, H, W) uint8 pictures, thumbnails drawn from them on request ("thumbs": "array")

Folder indexes walk DIR recursively (hidden folders skipped, symlinks not followed) for .jpg .jpeg .png
.gif .bmp .webp files in sorted order; an item's label is its top-level sub-folder's name (ImageFolder
layout: DIR/cat/1.jpg -> "cat"), or null for files directly in DIR. Unreadable images are skipped and
listed in the manifest. Items are addressed by integer id only; a file is served only from inside its
folder (the path is resolved, symlinks included, and must stay under the root).

The default gallery of a 1x28x28 model (LeNet) is the 10,000 MNIST test digits (`net.datasets.load_mnist`),
indexed on first use into the cache folder under a name keyed by the model's fingerprint.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from net.paths import cache_dir
from net.preprocess import ImageError, load_image
from net.progress import progress_bar

from .model import ALLOWED_FORMATS, Model

__all__ = [
    "IMAGE_SUFFIXES",
    "Gallery",
    "build_array_index",
    "build_index",
    "default_cache_dir",
    "find_images",
    "mnist_gallery",
    "model_block",
    "open_gallery",
    "rank_features",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
INDEX_DIRNAME = ".crema-index"
FORMAT = "crema-gallery"
VERSION = 1


def default_cache_dir() -> Path:
    """$CREMA_CACHE, else $XDG_CACHE_HOME/crema, else ~/.cache/crema (net.paths.cache_dir)."""
    return cache_dir()


def find_images(root: str | Path) -> list[Path]:
    """Image files under `root` (relative paths sorted as posix strings), hidden folders and files skipped."""
    root = Path(root)
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES):
                found.append(Path(dirpath, name).relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


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


class Gallery:
    """A loaded index (see the module docstring)."""

    def __init__(self, path: Path, manifest: dict, features: np.ndarray, images: np.ndarray | None) -> None:
        self.path = path
        self.manifest = manifest
        self.features = features
        self.images = images
        self.items: list[dict] = manifest["items"]
        root = manifest.get("source", {}).get("root")
        self.root = Path(root) if root else None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def fingerprint(self) -> str:
        return self.manifest["model"]["fingerprint"]

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> Gallery:
        """Read an index folder; with `model`, refuse an index built with another model or weights."""
        path = Path(path)
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"gallery index {path}: cannot read manifest.json ({exc})") from None
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ValueError(f"gallery index {path}: not a {FORMAT} v{VERSION} manifest")
        features = np.load(path / "features.npy", allow_pickle=False)
        n = len(manifest["items"])
        if features.ndim != 2 or features.shape[0] != n:
            raise ValueError(f"gallery index {path}: features.npy has shape {features.shape}, expected ({n}, D)")
        if model is not None and manifest["model"]["fingerprint"] != model.fingerprint:
            raise ValueError(
                f"gallery index {path} was built with another model or weights "
                f"(fingerprint {manifest['model']['fingerprint'][:16]}, serving {model.fingerprint[:16]}); "
                f"rebuild it with `crema index`"
            )
        images = None
        if manifest.get("thumbs") == "array":
            images = np.load(path / "images.npy", allow_pickle=False, mmap_mode="r")
        return cls(path, manifest, np.ascontiguousarray(features, dtype=np.float32), images)

    # -- ranking ---------------------------------------------------------------------------------------
    def search_batch(self, queries: np.ndarray, k: int = 12) -> tuple[np.ndarray, np.ndarray]:
        """queries: (N, D) L2-normalised features -> (ids (N, k'), scores (N, k')) with k' = min(k, len(self)),
        each row best first (ties by lower id). One (N, D) x (D, G) product for the whole batch."""
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"gallery {self.path}: queries have shape {queries.shape}, expected (N, {self.dim})")
        return rank_features(self.features, queries, k)

    def hits(self, ids: np.ndarray, scores: np.ndarray) -> list[dict]:
        """One row of `search_batch` as [{"id", "score", "label"}]."""
        return [
            {"id": int(i), "score": float(s), "label": self.items[int(i)].get("label")} for i, s in zip(ids, scores)
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
        return int(self.features.shape[1])

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
        path = _within(self.root, rel) if (self.root and rel) else None
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
def model_block(model: Model) -> dict:
    """The "model" block of an index manifest: what the features were computed with."""
    return {
        "fingerprint": model.fingerprint,
        "name": model.name,
        "feature_blob": model.feature_blob,
        "dim": model.feature_dim,
        "preset": model.preset,
    }


def _write_index(
    tmp: Path, out: Path, manifest: dict, features: np.ndarray, images: np.ndarray | None = None
) -> Gallery:
    """Write features (+ images) and the manifest into `tmp`, then move it to `out` (replacing it)."""
    np.save(tmp / "features.npy", features.astype(np.float32, copy=False))
    if images is not None:
        np.save(tmp / "images.npy", images)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return Gallery.load(out)


def _tmp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def build_index(
    root: str | Path,
    model: Model,
    out: str | Path | None = None,
    *,
    batch: int = 32,
    thumb_size: int = 128,
    progress: bool = True,
    name: str | None = None,
) -> Gallery:
    """Index every image under `root` (see the module docstring) into `out` (default root/.crema-index),
    `batch` images per forward pass. Returns the loaded Gallery."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"gallery folder {root} is not a directory")
    out = Path(out) if out is not None else root / INDEX_DIRNAME
    files = find_images(root)
    if not files:
        raise ValueError(f"gallery folder {root}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    tmp = _tmp_dir(out)
    (tmp / "thumbs").mkdir()
    bar = progress_bar(len(files), f"indexing {root}", unit="img", enabled=progress)
    items: list[dict] = []
    skipped: list[dict] = []
    feats: list[np.ndarray] = []
    try:
        for start in range(0, len(files), batch):
            xs = []
            for rel in files[start : start + batch]:
                try:
                    img = load_image(root / rel, allowed_formats=ALLOWED_FORMATS)
                except (ImageError, OSError) as exc:
                    skipped.append({"path": rel.as_posix(), "error": str(exc)})
                    continue
                i = len(items)
                thumb = img.copy()
                thumb.thumbnail((thumb_size, thumb_size))
                tname = f"thumbs/{i:06d}.png" if thumb.mode == "L" else f"thumbs/{i:06d}.jpg"
                thumb.save(tmp / tname, **({"quality": 85} if tname.endswith(".jpg") else {}))
                label = rel.parts[0] if len(rel.parts) > 1 else None
                items.append({"id": i, "path": rel.as_posix(), "label": label, "thumb": tname})
                xs.append(model.pre(img))
            if xs:
                feats.append(model.infer(np.stack(xs))[1])
            bar.update(min(batch, len(files) - start))
        bar.close()
        if not items:
            raise ValueError(f"gallery folder {root}: none of the {len(files)} images could be read")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "name": name or root.resolve().name,
            "model": model_block(model),
            "source": {"kind": "folder", "root": str(root.resolve())},
            "count": len(items),
            "thumbs": "files",
            "items": items,
            "skipped": skipped,
        }
        return _write_index(tmp, out, manifest, np.concatenate(feats))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    out = Path(out)
    tmp = _tmp_dir(out)
    bar = progress_bar(len(images), f"indexing {name}", unit="img", enabled=progress)
    feats = []
    try:
        for start in range(0, len(images), batch):
            chunk = images[start : start + batch]
            feats.append(model.infer(np.stack([model.preprocess(a) for a in chunk]))[1])
            bar.update(len(chunk))
        bar.close()
        items = [
            {"id": i, "path": None, "label": None if labels is None else str(labels[i]), "thumb": None}
            for i in range(len(images))
        ]
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "name": name,
            "model": model_block(model),
            "source": {"kind": "array", "root": None},
            "count": len(items),
            "thumbs": "array",
            "items": items,
            "skipped": [],
        }
        return _write_index(tmp, out, manifest, np.concatenate(feats), images)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


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
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
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
