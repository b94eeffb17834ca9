"""Indexing many images: sources, shards, the manifest, and the local and Ray engines behind `crema index`.

    source = read_source("photos/")                         # Source: ordered items (ref, label)
    out = index_source(source, model, "photos/.crema-index", engine="local")    # -> the index folder
    out = index_source(source, model, out, engine="ray", address="auto", workers=8)

SOURCE kinds (`read_source`):
    folder   DIR: images under DIR (`find_images`: sorted, hidden entries skipped); label = the top sub-folder
    glob     "DIR/**/*.jpg": the matching files, sorted; label None; served from the glob's fixed prefix folder
    list     FILE.txt (one path or URL a line; blank lines and '#' comments skipped), FILE.csv (column "path",
             "url" or "image", else the first; optional "label"), FILE.parquet (same columns; needs pyarrow).
             Relative paths are relative to FILE's folder; http(s) URLs are fetched with scraper.fetch.fetch_url
             (its SSRF rules: public addresses only, size and time limits). A repeated path or URL is recorded as
             an error row ("duplicate of item #i"), not indexed twice.

Index folder (format "crema-gallery" version 2; `server.gallery.Gallery` reads it):
    manifest.json         written last, atomically: everything below is complete when it exists. {"format",
                          "version": 2, "name", "model", "source": {"kind", "root", "spec"}, "count", "errors",
                          "skipped": [first 1,000 error rows], "thumbs", "shard_size", "shards": [{"no", "rows",
                          "ok"}], "vectors": {"file", "factory", "nprobe", "k_factor", "recall_at_10", ...}}
    shards/NNNNNN.json    one shard's rows in source order: {"i", "path", "label", "thumb", "error"}; written after
                          its features, so its presence marks the shard done (a resumed run skips it)
    shards/NNNNNN.npy     (ok, D) float32 L2-normalised features of the shard's rows without an error, in order
    thumbs/NNNNNN/*.jpg   thumbnails (PNG for grayscale), or images.npy for in-memory galleries ("array")
    vectors-GGGGGG.faiss  the FAISS index (server.vector_index) over all shards' features; gallery id = position
                          among the rows without error, in shard order
    run.json              only while a run is unfinished: the digest of its items, to resume or refuse

Work is cut into shards of `shard_size` consecutive items. A shard is one unit for both engines: decode (thumbnails,
preprocessing), then the Net in batches of `batch` rows of that shard in order, then its two files. The batches are
therefore the same whichever engine runs the shard, so the features are equal bit for bit (crema's Net gives batch
dependent bits: a 1-image and a 7-image batch differ in the last place). A shard written twice (a worker killed
after writing, its task retried) is written whole again with the same content: no duplicates, no gaps.

Engines:
    local   shards in order in this process: decoding on a thread pool (one thread per core), the Net on all cores
    ray     Ray Data: one row per shard; `ray.data.Dataset.map` decodes in Ray tasks, `map_batches` runs the Net in
            an actor pool (one Model per actor) and writes the shard files; the driver only counts. Workers must
            see the model files, SOURCE and the index folder at the same paths (a shared file system).

Exceptions: ValueError for a bad SOURCE or a refused resume (names the file and the fix); RuntimeError for the
environment (Ray missing, shards not written after a run, a full disk: "run the same command again to resume").
"""

from __future__ import annotations

import csv
import errno
import glob as globlib
import hashlib
import io
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from net.paths import write_atomic
from net.preprocess import ImageError, Preprocess, load_image

from .model import ALLOWED_FORMATS, Model
from .vector_index import VectorIndex, drop_self, exact_topk, plan_index

__all__ = [
    "IMAGE_SUFFIXES",
    "ModelSpec",
    "Source",
    "find_images",
    "index_arrays",
    "index_source",
    "model_block",
    "read_source",
    "shard_rows",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
FORMAT = "crema-gallery"
VERSION = 2
SHARD_SIZE = 256
MEMORY_BUDGET = 4e9  # bytes the vector index may take in RAM, unless --index-memory says otherwise
SKIPPED_LISTED = 1000
TUNE_QUERIES = 500


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


def model_block(model: Model) -> dict:
    """The "model" block of an index manifest: what the features were computed with."""
    return {
        "fingerprint": model.fingerprint,
        "name": model.name,
        "feature_blob": model.feature_blob,
        "dim": model.feature_dim,
        "preset": model.preset,
    }


# -- sources ---------------------------------------------------------------------------------------------------
@dataclass
class Source:
    """Items to index, in order: refs (paths relative to `root`, absolute paths, or URLs), labels, and errors known
    before decoding (duplicates)."""

    kind: str  # "folder" | "glob" | "list"
    spec: str
    root: Path | None
    refs: list[str]
    labels: list[str | None]
    errors: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.refs)

    def digest(self, start: int = 0, stop: int | None = None) -> str:
        h = hashlib.sha1()
        for ref, label in zip(self.refs[start:stop], self.labels[start:stop]):
            h.update(f"{ref}\t{label}\n".encode())
        return h.hexdigest()


def _is_url(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def _list_rows(path: Path) -> list[tuple[str, str | None]]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"SOURCE {path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        table = pq.read_table(path)
        cols = [c.lower() for c in table.column_names]
        key = next((c for c in ("path", "url", "image") if c in cols), None)
        if key is None:
            raise ValueError(f"SOURCE {path}: no 'path', 'url' or 'image' column (columns: {table.column_names})")
        refs = table.column(cols.index(key)).to_pylist()
        labels = table.column(cols.index("label")).to_pylist() if "label" in cols else [None] * len(refs)
        return [(str(r), None if lab is None else str(lab)) for r, lab in zip(refs, labels) if r]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"SOURCE {path}: cannot read it as UTF-8 text ({exc})") from None
    if suffix == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return []
        head = [c.strip().lower() for c in rows[0]]
        key = next((head.index(c) for c in ("path", "url", "image") if c in head), None)
        lab = head.index("label") if "label" in head else None
        if key is None:  # no header: first column
            key, body = 0, rows
        else:
            body = rows[1:]
        return [
            (r[key].strip(), r[lab].strip() if lab is not None and lab < len(r) else None)
            for r in body
            if len(r) > key and r[key].strip()
        ]
    return [(s.strip(), None) for s in text.splitlines() if s.strip() and not s.lstrip().startswith("#")]


def read_source(spec: str | Path) -> Source:
    """A SOURCE (see the module docstring) -> Source; ValueError when it names nothing usable."""
    s = str(spec)
    path = Path(s)
    if path.is_dir():
        refs = [p.as_posix() for p in find_images(path)]
        labels = [r.split("/")[0] if "/" in r else None for r in refs]
        src = Source("folder", s, path.resolve(), refs, labels)
        if not refs:
            raise ValueError(f"gallery folder {path}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        return src
    if path.is_file() and path.suffix.lower() in (".txt", ".csv", ".parquet", ".lst"):
        rows = _list_rows(path)
        if not rows:
            raise ValueError(f"SOURCE {path}: lists no images")
        src = Source("list", s, path.resolve().parent, [r for r, _ in rows], [lab for _, lab in rows])
    elif any(c in s for c in "*?["):
        files = sorted(p for p in globlib.glob(s, recursive=True) if Path(p).is_file())
        if not files:
            raise ValueError(f"SOURCE {s}: the pattern matches no files")
        fixed = Path(s.split("*")[0].split("?")[0].split("[")[0] or ".")
        root = (fixed if fixed.is_dir() else fixed.parent).resolve()
        refs = [
            Path(f).resolve().relative_to(root).as_posix()
            if Path(f).resolve().is_relative_to(root)
            else str(Path(f).resolve())
            for f in files
        ]
        src = Source("glob", s, root, refs, [None] * len(refs))
    elif not path.exists():
        raise ValueError(f"SOURCE {s} is not a directory, a glob or a .txt/.csv/.parquet list: no such path")
    else:
        raise ValueError(f"SOURCE {s}: not a folder, a glob, or a .txt/.csv/.parquet list of images")
    seen: dict[str, int] = {}
    for i, ref in enumerate(src.refs):
        key = ref if _is_url(ref) else str((src.root / ref).resolve()) if src.root else ref
        if key in seen:
            src.errors[i] = f"duplicate of item #{seen[key]} ({src.refs[seen[key]]})"
        else:
            seen[key] = i
    return src


# -- one shard ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """How a worker process loads the same Model (`load` refuses files that changed since: the fingerprint)."""

    prototxt: str
    weights: str
    labels: str | None
    preset: str
    feature_blob: str
    name: str
    fingerprint: str

    @classmethod
    def of(cls, model: Model) -> ModelSpec:
        f = model.files
        return cls(
            str(f.prototxt),
            str(f.weights),
            str(f.labels) if f.labels else None,
            model.preset,
            model.feature_blob,
            model.name,
            model.fingerprint,
        )

    def load(self) -> Model:
        model = Model.load(
            self.prototxt, self.weights, self.labels, preset=self.preset, feature_blob=self.feature_blob, name=self.name
        )
        if model.fingerprint != self.fingerprint:
            raise RuntimeError(
                f"model files {self.prototxt} / {self.weights} differ on this worker (fingerprint "
                f"{model.fingerprint[:16]}, expected {self.fingerprint[:16]})"
            )
        return model


@dataclass(frozen=True)
class ShardJob:
    """What a worker needs for one shard: items start..stop of the run (absolute item numbers `first` + k)."""

    no: int
    first: int  # absolute number of the shard's first item in the index (counts across runs)
    refs: tuple[str, ...]
    labels: tuple[str | None, ...]
    errors: tuple[str | None, ...]


@dataclass(frozen=True)
class Context:
    out: str
    root: str | None
    pre: Preprocess
    thumb_size: int
    batch: int
    allow_private_urls: bool = False


def shard_name(no: int) -> str:
    return f"{no:06d}"


def _load(ref: str, ctx: Context):
    if _is_url(ref):
        from scraper.fetch import FetchError, fetch_url

        try:
            data = fetch_url(ref, allow_private=ctx.allow_private_urls).data
        except FetchError as exc:
            raise ImageError(ref, f"fetch failed: {exc}") from None
        return load_image(data, allowed_formats=ALLOWED_FORMATS)
    path = Path(ref) if Path(ref).is_absolute() or ctx.root is None else Path(ctx.root) / ref
    return load_image(path, allowed_formats=ALLOWED_FORMATS)


def _decode_one(job: ShardJob, k: int, ctx: Context) -> tuple[dict, np.ndarray | None]:
    i = job.first + k
    row = {"i": i, "path": job.refs[k], "label": job.labels[k], "thumb": None, "error": job.errors[k]}
    if row["error"]:
        return row, None
    try:
        img = _load(job.refs[k], ctx)
        x = ctx.pre(img)
    except (ImageError, OSError, ValueError) as exc:
        row["error"] = str(exc) or type(exc).__name__
        return row, None
    thumb = img.copy()
    thumb.thumbnail((ctx.thumb_size, ctx.thumb_size))
    rel = f"thumbs/{shard_name(job.no)}/{i:09d}.{'png' if thumb.mode == 'L' else 'jpg'}"
    buf = io.BytesIO()
    thumb.save(buf, format="PNG" if thumb.mode == "L" else "JPEG", **({} if thumb.mode == "L" else {"quality": 85}))
    try:
        write_atomic(Path(ctx.out) / rel, buf.getvalue(), sync_dir=False)
    except OSError as exc:
        raise _disk_error(exc, f"thumbnail {rel}") from None
    row["thumb"] = rel
    return row, x


def decode_shard(job: ShardJob, ctx: Context, pool: ThreadPoolExecutor | None = None) -> tuple[list[dict], np.ndarray]:
    """Read, thumbnail and preprocess one shard's images -> (rows, x (ok, C, H, W) float32 of the rows without an
    error, in order). A missing, unreadable or refused image becomes an error row."""
    (Path(ctx.out) / "thumbs" / shard_name(job.no)).mkdir(parents=True, exist_ok=True)
    ks = range(len(job.refs))
    done = list(pool.map(lambda k: _decode_one(job, k, ctx), ks)) if pool else [_decode_one(job, k, ctx) for k in ks]
    rows = [r for r, _ in done]
    xs = [x for _, x in done if x is not None]
    c, h, w = ctx.pre.output_shape
    return rows, np.stack(xs) if xs else np.zeros((0, c, h, w), dtype=np.float32)


def embed(model: Model, x: np.ndarray, batch: int) -> np.ndarray:
    """Features of x (N, C, H, W) in batches of `batch` rows in order -> (N, D) float32."""
    if not len(x):
        return np.zeros((0, model.feature_dim), dtype=np.float32)
    return np.concatenate([model.infer(np.ascontiguousarray(x[s : s + batch]))[1] for s in range(0, len(x), batch)])


def write_shard(out: str | Path, no: int, rows: list[dict], feats: np.ndarray) -> None:
    """The shard's features, then its rows (the rows file marks it done); both atomic. A full disk is a
    RuntimeError that says how to resume."""
    folder = Path(out) / "shards"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(feats, dtype=np.float32))
        write_atomic(folder / f"{shard_name(no)}.npy", buf.getvalue(), sync_dir=False)
        write_atomic(folder / f"{shard_name(no)}.json", json.dumps({"shard": no, "rows": rows}).encode())
    except OSError as exc:
        raise _disk_error(exc, f"shard {no} into {folder}") from None


def _disk_error(exc: OSError, what: str) -> Exception:
    """A full disk (or quota) as one RuntimeError that says how to resume; other OSErrors unchanged."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RuntimeError(
            f"disk full writing {what}: free some space and run the same command again to resume (finished shards "
            "are kept)"
        )
    return exc


def shard_rows(out: str | Path, no: int) -> list[dict] | None:
    """The rows of a finished shard, or None if it is not written (or damaged: then it is redone)."""
    try:
        rows = json.loads((Path(out) / "shards" / f"{shard_name(no)}.json").read_text(encoding="utf-8"))["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return rows if (Path(out) / "shards" / f"{shard_name(no)}.npy").is_file() else None


def shard_features(out: str | Path, no: int, *, mmap: bool = False) -> np.ndarray:
    return np.load(Path(out) / "shards" / f"{shard_name(no)}.npy", allow_pickle=False, mmap_mode="r" if mmap else None)


def run_shard(job: ShardJob, ctx: Context, model: Model, pool: ThreadPoolExecutor | None = None) -> tuple[int, int]:
    """Decode, embed and write one shard -> (rows, rows without error)."""
    rows, x = decode_shard(job, ctx, pool)
    write_shard(ctx.out, job.no, rows, embed(model, x, ctx.batch))
    return len(rows), len(x)


# -- engines -----------------------------------------------------------------------------------------------------
Progress = Callable[[int, int], None]  # (shard number, rows in it) after each finished shard


def _local_engine(jobs: Sequence[ShardJob], ctx: Context, model: Model, on_shard: Progress) -> None:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for job in jobs:
            n, _ok = run_shard(job, ctx, model, pool)
            on_shard(job.no, n)


def _ray_decode(row: dict, ctx: Context) -> dict:
    job = ShardJob(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(row["job"]).items()})
    rows, x = decode_shard(job, ctx)
    return {"no": job.no, "rows": json.dumps(rows), "x": x.tobytes(), "shape": list(x.shape)}


class _RayEmbed:
    """Ray Data actor: one Model per actor; runs a decoded shard through it and writes the shard."""

    def __init__(self, spec: ModelSpec, ctx: Context) -> None:
        self.model = spec.load()
        self.ctx = ctx

    def __call__(self, batch: dict) -> dict:
        nos, counts = [], []
        for no, rows, x, shape in zip(batch["no"], batch["rows"], batch["x"], batch["shape"]):
            x = np.frombuffer(x, dtype=np.float32).reshape([int(s) for s in shape])
            rows = json.loads(rows)
            write_shard(self.ctx.out, int(no), rows, embed(self.model, x, self.ctx.batch))
            nos.append(int(no))
            counts.append(len(rows))
        return {"no": np.array(nos, dtype=np.int64), "rows": np.array(counts, dtype=np.int64)}


def _ray_engine(
    jobs: Sequence[ShardJob], ctx: Context, spec: ModelSpec, on_shard: Progress, *, address: str | None, workers: int
) -> None:
    try:
        import ray
        import ray.data
    except ImportError:
        raise RuntimeError(
            "--engine ray needs Ray Data: pip install 'crema[scale]' (or: pip install 'ray[data]')"
        ) from None
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
            logging_level=logging.WARNING,
        )
    # Logical CPUs: 3/4 per Net actor, 1/4 per decode task, so `workers` actors leave room for decode tasks on
    # `workers` CPUs (with one CPU each, 2 actors on a 2-CPU Ray would hold every CPU and no decode task could start).
    # Different amounts also keep Ray Data from fusing the two steps into the actors: decoding stays in tasks.
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # our progress bar speaks for the run
    ds = ray.data.from_items([{"job": json.dumps(asdict(job))} for job in jobs], override_num_blocks=len(jobs))
    # A worker that dies is replaced: Ray retries a decode task (3 times) and restarts a Ray Data actor and resends
    # its shard (Ray Data's defaults, max_restarts=-1, max_task_retries=-1); a shard written twice is the same file.
    ds = ds.map(_ray_decode, fn_kwargs={"ctx": ctx}, num_cpus=0.25)
    ds = ds.map_batches(
        _RayEmbed,
        fn_constructor_kwargs={"spec": spec, "ctx": ctx},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=0.75,
    )
    for row in ds.iter_rows():
        on_shard(int(row["no"]), int(row["rows"]))


# -- a run ---------------------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_index_folder(out: Path) -> bool:
    return any((out / name).exists() for name in ("manifest.json", "run.json", "shards"))


def _existing_refs(out: Path, manifest: dict) -> set[str]:
    refs: set[str] = set()
    for s in manifest.get("shards", []):
        rows = shard_rows(out, s["no"])
        if rows is None:
            raise ValueError(f"index {out}: shard {s['no']} is missing or damaged; rebuild it with --restart")
        refs.update(r["path"] for r in rows if r["path"] is not None)
    return refs


def index_source(
    source: Source,
    model: Model,
    out: str | Path,
    *,
    engine: str = "local",
    address: str | None = None,
    workers: int | None = None,
    batch: int = 32,
    shard_size: int = SHARD_SIZE,
    thumb_size: int = 128,
    memory_budget: float = MEMORY_BUDGET,
    recall_target: float = 0.95,
    restart: bool = False,
    progress: bool = True,
    name: str | None = None,
    allow_private_urls: bool = False,
    on_shard: Progress | None = None,
) -> tuple[Path, dict]:
    """Index `source` into the folder `out` (see the module docstring) -> (out, note). A folder with a finished
    index gets the items it does not hold yet (incremental add); an unfinished run of the same items resumes;
    restart=True starts over. note: {"added", "resumed_shards", "missing_from_source"}."""
    if engine not in ("local", "ray"):
        raise ValueError(f"--engine must be local or ray, got {engine!r}")
    if batch < 1 or shard_size < 1 or thumb_size < 16:
        raise ValueError("batch and shard_size must be >= 1, thumb_size >= 16")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not _is_index_folder(out))):
        raise ValueError(
            f"--out {out} is not an index folder (no manifest.json, run.json or shards/) and not empty: "
            "choose another --out"
        )
    if restart and out.exists():
        shutil.rmtree(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    manifest = _read_json(out / "manifest.json")
    if manifest is not None and manifest.get("version") != VERSION:
        raise ValueError(
            f"index {out} has the old gallery format (version {manifest.get('version')}); pass --restart to rebuild it"
        )
    if manifest is not None and manifest["model"]["fingerprint"] != model.fingerprint:
        raise ValueError(
            f"index {out} was built with another model or weights (fingerprint "
            f"{manifest['model']['fingerprint'][:16]}, indexing with {model.fingerprint[:16]}); pass "
            "--restart to rebuild it, or --out for a new index"
        )
    first_shard = len(manifest["shards"]) if manifest else 0
    first_item = sum(s["rows"] for s in manifest["shards"]) if manifest else 0
    if manifest is not None and manifest.get("shard_size"):
        shard_size = manifest["shard_size"]
    # the items of this run: everything (a new index) or what the finished index lacks (incremental add)
    take = list(range(len(source)))
    missing = 0
    if manifest is not None:
        known = _existing_refs(out, manifest)
        take = [i for i in take if source.refs[i] not in known]
        missing = len(known - set(source.refs))
    if manifest is not None and not take:  # a finished index that holds all of SOURCE: nothing to do
        return out, {"added": 0, "resumed_shards": 0, "missing_from_source": missing}
    refs = [source.refs[i] for i in take]
    labels = [source.labels[i] for i in take]
    errors = [source.errors.get(i) for i in take]
    digest = hashlib.sha1("".join(f"{r}\t{lab}\n" for r, lab in zip(refs, labels)).encode()).hexdigest()
    run = {
        "format": "crema-index-run",
        "digest": digest,
        "items": len(refs),
        "first_shard": first_shard,
        "shard_size": shard_size,
        "fingerprint": model.fingerprint,
    }
    old = _read_json(out / "run.json")
    if old is not None and old.get("batch", batch) != batch:
        batch = old["batch"]  # a resumed run keeps its batches, so every shard's features come out the same
    run["batch"] = batch
    if old is not None and old != run:
        raise ValueError(
            f"index {out} holds an unfinished run of another SOURCE or model ({old.get('items')} items, "
            f"digest {str(old.get('digest'))[:12]}; now {len(refs)} items, {digest[:12]}): SOURCE "
            "changed between runs. Run it again with the same SOURCE to finish, or pass --restart"
        )
    if old is None:
        write_atomic(out / "run.json", json.dumps(run).encode())
    jobs = [
        ShardJob(
            first_shard + s // shard_size,
            first_item + s,
            tuple(refs[s : s + shard_size]),
            tuple(labels[s : s + shard_size]),
            tuple(errors[s : s + shard_size]),
        )
        for s in range(0, len(refs), shard_size)
    ]
    todo = [j for j in jobs if shard_rows(out, j.no) is None]
    ctx = Context(
        str(out.resolve()), str(source.root) if source.root else None, model.pre, thumb_size, batch, allow_private_urls
    )
    from net.progress import progress_bar

    bar = progress_bar(
        len(refs),
        f"indexing {source.spec}",
        unit="img",
        enabled=progress,
        initial=len(refs) - sum(len(j.refs) for j in todo),
    )

    def done(no: int, n: int) -> None:
        bar.update(n)
        if on_shard is not None:
            on_shard(no, n)

    try:
        if todo and engine == "local":
            _local_engine(todo, ctx, model, done)
        elif todo:
            _ray_engine(todo, ctx, ModelSpec.of(model), done, address=address, workers=workers or 2)
    finally:
        bar.close()
    unwritten = [j.no for j in jobs if shard_rows(out, j.no) is None]
    if unwritten:
        raise RuntimeError(
            f"{len(unwritten)} of {len(jobs)} shards were not written (a worker lost?): run the same "
            f"command again to resume (first missing: shard {unwritten[0]})"
        )
    shards = (manifest["shards"] if manifest else []) + [
        {"no": j.no, "rows": len(j.refs), "ok": len(shard_features(out, j.no, mmap=True))} for j in jobs
    ]
    base = {
        "name": name or (manifest or {}).get("name") or Path(source.spec.rstrip("/")).resolve().name,
        "source": {"kind": source.kind, "root": str(source.root) if source.root else None, "spec": source.spec},
        "thumbs": "files",
    }
    finish(out, model, shards, shard_size, base, manifest, memory_budget=memory_budget, recall_target=recall_target)
    (out / "run.json").unlink(missing_ok=True)
    note = {"added": len(refs), "resumed_shards": len(jobs) - len(todo), "missing_from_source": missing}
    return out, note


# -- the manifest and the vector index -------------------------------------------------------------------------
def _feature_chunks(out: Path, shards: list[dict]) -> Iterator[np.ndarray]:
    for s in shards:
        if s["ok"]:
            yield shard_features(out, s["no"], mmap=True)


def finish(
    out: Path,
    model_or_block,
    shards: list[dict],
    shard_size: int,
    base: dict,
    old: dict | None,
    *,
    memory_budget: float = MEMORY_BUDGET,
    recall_target: float = 0.95,
) -> dict:
    """Build (or extend) the vector index over the shards' features, tune it, then write manifest.json: the step
    that makes the folder an index. Incremental: the old index gets the new shards' vectors when its plan still
    fits the new size; otherwise it is rebuilt from all shards."""
    block = model_or_block if isinstance(model_or_block, dict) else model_block(model_or_block)
    dim = block["dim"]
    n = sum(s["ok"] for s in shards)
    if n == 0:
        raise ValueError(f"index {out}: none of the {sum(s['rows'] for s in shards)} images could be read")
    plan = plan_index(n, dim, memory_budget=memory_budget)
    vi = None
    gen = (old or {}).get("generation", 0) + 1
    if old is not None and old["vectors"]["factory"] == plan.factory:  # same plan: add to the trained index
        vi = VectorIndex.load(out / old["vectors"]["file"], old["vectors"], mmap=False)
        new = shards[len(old["shards"]) :]
    if vi is None:
        sample = None
        if not plan.exact:
            sample = _training_sample(out, shards, plan.train_size)
        vi = VectorIndex.create(plan, sample)
        new = shards
    for chunk in _feature_chunks(out, new):
        vi.add(chunk)
    if vi.exact:
        vi.tune(np.zeros((0, dim), dtype=np.float32), None)  # exact: recall 1 by construction
    else:
        # recall on held-out queries: indexed vectors outside this build's training draw (an index extended
        # incrementally was trained on an earlier draw), their own id dropped from both lists
        pool = np.setdiff1d(np.arange(n), _training_ids(n, plan.train_size))
        if len(pool) < min(TUNE_QUERIES, n):
            pool = np.arange(n)
        qids = np.sort(np.random.default_rng(0).choice(pool, size=min(TUNE_QUERIES, len(pool)), replace=False))
        queries = _rows_by_id(out, shards, qids)
        truth, _ = exact_topk(queries, _feature_chunks(out, shards), 11)
        vi.tune(queries, drop_self(truth, qids, 10), target=recall_target, exclude_self=qids)
    vfile = f"vectors-{gen:06d}.faiss"
    try:
        vi.save(out / vfile)
    except (OSError, RuntimeError) as exc:  # FAISS reports a failed write as RuntimeError
        raise RuntimeError(
            f"cannot write the vector index {out / vfile} ({str(exc).splitlines()[0][:200]}); the previous index, if "
            "any, is untouched: free some space and run the same command again (the shards are kept)"
        ) from None
    skipped = []
    errors = 0
    for s in shards:
        rows = shard_rows(out, s["no"]) or []
        for r in rows:
            if r["error"]:
                errors += 1
                if len(skipped) < SKIPPED_LISTED:
                    skipped.append({"path": r["path"], "error": r["error"]})
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **base,
        "model": block,
        "count": n,
        "errors": errors,
        "skipped": skipped,
        "shard_size": shard_size,
        "shards": shards,
        "generation": gen,
        "vectors": {**vi.meta, "file": vfile},
    }
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    for f in out.glob("vectors-*.faiss"):
        if f.name != vfile:
            f.unlink(missing_ok=True)
    return manifest


def _rows_by_id(out: Path, shards: list[dict], ids: np.ndarray) -> np.ndarray:
    """Feature rows of gallery ids (sorted), read shard by shard."""
    cum = np.cumsum([0] + [s["ok"] for s in shards])
    res = []
    for s_i, s in enumerate(shards):
        sel = ids[(ids >= cum[s_i]) & (ids < cum[s_i + 1])] - cum[s_i]
        if len(sel):
            res.append(np.asarray(shard_features(out, s["no"], mmap=True)[sel]))
    return np.concatenate(res).astype(np.float32)


def _training_ids(n: int, size: int) -> np.ndarray:
    return np.sort(np.random.default_rng(1).choice(n, size=min(size, n), replace=False))


def _training_sample(out: Path, shards: list[dict], size: int) -> np.ndarray:
    return _rows_by_id(out, shards, _training_ids(sum(s["ok"] for s in shards), size))


def index_arrays(
    images: np.ndarray,
    labels,
    model: Model,
    out: str | Path,
    *,
    name: str,
    batch: int = 256,
    shard_size: int = 4096,
    progress: bool = True,
) -> Path:
    """Index in-memory pictures (N, H, W) uint8 (e.g. MNIST digits) into a fresh folder `out` (thumbnails drawn
    from images.npy): shards + vector index + manifest, written into a temporary folder and moved into place."""
    from net.progress import progress_bar

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "shards").mkdir(parents=True)
    try:
        np.save(tmp / "images.npy", images)
        bar = progress_bar(len(images), f"indexing {name}", unit="img", enabled=progress)
        shards = []
        for no, s in enumerate(range(0, len(images), shard_size)):
            chunk = images[s : s + shard_size]
            x = np.stack([model.preprocess(a) for a in chunk])
            rows = [
                {
                    "i": s + k,
                    "path": None,
                    "label": None if labels is None else str(labels[s + k]),
                    "thumb": None,
                    "error": None,
                }
                for k in range(len(chunk))
            ]
            write_shard(tmp, no, rows, embed(model, x, batch))
            shards.append({"no": no, "rows": len(rows), "ok": len(rows)})
            bar.update(len(chunk))
        bar.close()
        base = {"name": name, "source": {"kind": "array", "root": None, "spec": None}, "thumbs": "array"}
        finish(tmp, model, shards, shard_size, base, None)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
