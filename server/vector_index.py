"""The gallery's vector index on FAISS: exact up to a size, approximate beyond, chosen from the data and a memory budget.

    plan = plan_index(n, dim, memory_budget=1.5e9)          # IndexPlan: "Flat" or "IVF1024,PQ64x4fs,Refine(SQ8)"
    vi = VectorIndex.create(plan, sample)                     # trains on `sample` (k-means + PQ), empty
    vi.add(features)                                          # incremental: more rows get the next ids
    vi.tune(queries, truth, target=0.95)                      # nprobe / k_factor for recall@10 >= target
    vi.save("index/vectors-000001.faiss")                    # atomic (temporary file + rename)
    vi = VectorIndex.load(path, meta, mmap=True)              # memory-mapped: processes share the page cache
    ids, scores = vi.search(queries, k)                       # (N, k) int64, (N, k) float32, best first

All vectors are L2-normalised, so the inner product is the cosine similarity and "exact" means IndexFlatIP.

The plan (autofaiss's recipe, on our numbers):
    n * dim * 4 bytes <= flat_max_bytes (64 MB: 12,500 x 1280-d, 32,000 x 500-d) and the budget -> Flat (exact)
    otherwise IVF{nlist},PQ{M}x4fs,Refine({codec}):
        nlist  = power of two near sqrt(n), at most n / 39 (k-means wants >= 39 training points per list);
                 ~sqrt(n) keeps k-means cheap (1,024 lists at 1 M) while the fast-scan lists stay quick to scan
        M      = dim / 10 rounded to an even divisor of dim (4-bit fast-scan PQ: M/2 bytes per vector); it only
                 shortlists candidates, k_factor * k of them per query (PQ with 20 dims per code ranked our
                 clustered 1280-d test vectors too coarsely: recall@10 < 0.92 at any nprobe)
        codec  = the finest of SQfp16 (2 B/dim), SQ8 (1), SQ6 (3/4), SQ4 (1/2) whose codes fit the budget with the
                 rest; the shortlist is re-ranked with these codes, which gives the recall
      bytes  ~ n * (M/2 + codec + 8 (id)) + nlist * dim * 4 (centroids); no codec fits -> PQ alone (recall lower).
Search parameters (nprobe, k_factor) come from `tune`: the cheapest pair (measured time per query, one thread) whose
recall@10 against exact search on held-out queries reaches the target plus 1.5 binomial standard errors (0.955 for
0.95 on 500 queries); the measured recall is kept in the metadata (`meta`).

Memory-mapped load: IO_FLAG_MMAP_IFC maps the flat codes (the exact index's vectors, the refine codes) from the
file instead of copying them; several `crema serve` processes on one index share them through the page cache.
A mapped index is read-only (`add` raises).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from net.paths import atomic_path

__all__ = ["IndexPlan", "VectorIndex", "drop_self", "exact_topk", "plan_index", "recall_at"]

FLAT_MAX_BYTES = 64_000_000  # exact search reads every vector per query: ~64 MB stays under ~10 ms
CODECS = (("SQfp16", 2.0), ("SQ8", 1.0), ("SQ6", 0.75), ("SQ4", 0.5))
K_FACTORS = (8, 32, 128, 256, 512)
TUNED_K = 10  # recall@10 is what tuning measures; searches ask FAISS for at least this many


def _faiss():
    try:
        import faiss
    except ImportError as exc:  # a runtime dependency; a broken install still gets one sentence
        raise RuntimeError("the gallery needs FAISS: pip install faiss-cpu") from exc
    return faiss


@dataclass(frozen=True)
class IndexPlan:
    """What to build: `factory` is a faiss.index_factory string; `bytes` the estimated memory of the index."""

    factory: str
    dim: int
    nlist: int = 0
    pq_m: int = 0
    codec: str | None = None
    bytes: int = 0

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"

    @property
    def train_size(self) -> int:
        """Training vectors the plan wants (0 for Flat): 64 per list (at most 100,000), at least 4,096 for the PQ
        codebooks."""
        return 0 if self.exact else min(max(64 * self.nlist, 4096), 100_000)


def _even_divisor_near(dim: int, target: int) -> int:
    cands = [m for m in range(2, dim + 1, 2) if dim % m == 0]
    if not cands:
        return 0
    return min(cands, key=lambda m: (abs(m - target), m))


def plan_index(n: int, dim: int, *, memory_budget: float, flat_max_bytes: int = FLAT_MAX_BYTES) -> IndexPlan:
    """The index for n vectors of `dim` floats within `memory_budget` bytes (see the module docstring)."""
    if n < 0 or dim < 1 or memory_budget <= 0:
        raise ValueError(
            f"plan_index: n={n}, dim={dim}, memory_budget={memory_budget}: expected n >= 0, dim >= 1, budget > 0"
        )
    flat = n * dim * 4
    m = _even_divisor_near(dim, max(2, dim // 10))
    nlist = 1 << max(4, round(math.log2(max(1.0, math.sqrt(max(n, 1))))))
    while nlist > 16 and nlist * 39 > n:
        nlist //= 2
    if flat <= min(flat_max_bytes, memory_budget) or m == 0 or n < 39 * 16:
        if flat > memory_budget:
            raise ValueError(
                f"{n} vectors of {dim} floats need {flat / 1e9:.2f} GB exact, over the memory budget "
                f"of {memory_budget / 1e9:.2f} GB, and are too few or too narrow for an approximate index"
            )
        return IndexPlan("Flat", dim, bytes=flat)
    fixed = nlist * dim * 4 + n * (m // 2 + 8)
    for codec, per_dim in CODECS:
        total = int(fixed + n * dim * per_dim)
        if total <= memory_budget:
            return IndexPlan(f"IVF{nlist},PQ{m}x4fs,Refine({codec})", dim, nlist, m, codec, total)
    return IndexPlan(f"IVF{nlist},PQ{m}x4fs", dim, nlist, m, None, int(fixed))


def exact_topk(queries: np.ndarray, chunks: Iterable[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top k of queries (Q, D) over the rows of `chunks` taken in order as one matrix (ids
    count on across chunks), streaming: one chunk in memory at a time. -> (ids (Q, k), scores (Q, k)), best first,
    ties by lower id; -1 / -inf pad when there are fewer than k rows."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_s = np.full((len(q), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(q), k), -1, dtype=np.int64)
    base = 0
    for chunk in chunks:
        s = q @ np.asarray(chunk, dtype=np.float32).T  # (Q, c)
        ids = np.broadcast_to(np.arange(base, base + s.shape[1], dtype=np.int64), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        order = np.lexsort((all_i, -all_s), axis=1)[:, :k] if all_s.shape[1] else np.zeros((len(q), 0), int)
        best_s = np.take_along_axis(all_s, order, axis=1)
        best_i = np.take_along_axis(all_i, order, axis=1)
        base += s.shape[1]
    return best_i, best_s


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    """Mean over queries of |found[:, :k] ∩ truth[:, :k]| / |truth row| (-1 entries ignored)."""
    hits, total = 0, 0
    for f, t in zip(found[:, :k], truth[:, :k]):
        t = {int(v) for v in t if v >= 0}
        hits += len(t & {int(v) for v in f if v >= 0})
        total += len(t)
    return hits / total if total else 1.0


class VectorIndex:
    """A FAISS index over L2-normalised vectors (ids 0..n-1 in the order added) plus its metadata `meta`:
    {"factory", "dim", "count", "nprobe", "k_factor", "recall_at_10", "recall_queries", "search_ms", "bytes"}."""

    def __init__(self, index, meta: dict, *, mapped: bool = False) -> None:
        self.index = index
        self.meta = meta
        self.mapped = mapped
        self._params = None
        self._set_params()

    # -- building ------------------------------------------------------------------------------------------
    @classmethod
    def create(cls, plan: IndexPlan, sample: np.ndarray | None = None, *, seed: int = 0) -> VectorIndex:
        """An empty index for `plan`, trained on `sample` (rows of the data; approximate plans need >= 39 * nlist)."""
        faiss = _faiss()
        index = faiss.index_factory(plan.dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if not plan.exact:
            if sample is None or len(sample) < 39 * plan.nlist:
                got = 0 if sample is None else len(sample)
                raise ValueError(f"{plan.factory}: needs >= {39 * plan.nlist} training vectors, got {got}")
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.seed = seed
            ivf.cp.max_points_per_centroid = 64
            index.train(np.ascontiguousarray(sample, dtype=np.float32))
        meta = {
            "factory": plan.factory,
            "dim": plan.dim,
            "count": 0,
            "nprobe": None,
            "k_factor": None,
            "recall_at_10": 1.0 if plan.exact else None,
            "recall_queries": 0,
            "search_ms": None,
            "bytes": plan.bytes,
            "plan": asdict(plan),
        }
        if not plan.exact:
            meta["nprobe"], meta["k_factor"] = min(16, plan.nlist), 8 if plan.codec else None
        return cls(index, meta)

    @property
    def exact(self) -> bool:
        return self.meta["factory"] == "Flat"

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def add(self, x: np.ndarray) -> None:
        """Append rows (N, dim) float32; they get ids len(self) .. len(self) + N - 1."""
        if self.mapped:
            raise ValueError("a memory-mapped index is read-only; load it with mmap=False to add vectors")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"vector index: adding shape {x.shape}, expected (N, {self.dim})")
        self.index.add(x)
        self.meta["count"] = len(self)

    # -- search --------------------------------------------------------------------------------------------
    def _set_params(self) -> None:
        faiss = _faiss()
        if self.exact:
            self._params = None
            return
        ivf_params = faiss.SearchParametersIVF(nprobe=int(self.meta["nprobe"]))
        if self.meta.get("k_factor"):
            self._params = faiss.IndexRefineSearchParameters(
                k_factor=float(self.meta["k_factor"]), base_index_params=ivf_params
            )
            self._keep = ivf_params  # SWIG holds a raw pointer: keep the Python object alive
        else:
            self._params = ivf_params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries (N, dim) -> (ids (N, k'), scores (N, k')), k' = min(k, len(self)), best first, ties by lower id
        within the k' returned; an approximate index may return fewer hits for a row (id -1, score -inf pad)."""
        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"vector index: queries have shape {q.shape}, expected (N, {self.dim})")
        k = max(0, min(int(k), len(self)))
        if k == 0 or len(q) == 0:
            return np.zeros((len(q), k), dtype=np.int64), np.zeros((len(q), k), dtype=np.float32)
        faiss = _faiss()
        # One query: one thread. FAISS's OpenMP team costs more than it saves on a single query, and on a busy
        # machine its spinning threads wait for cores (measured 56 ms -> 136 ms exact at 100k with 2 threads).
        threads = faiss.omp_get_max_threads()
        if len(q) == 1:
            faiss.omp_set_num_threads(1)
        try:
            # at least the k the parameters were tuned for: the refine shortlist is k_factor * k, so k=1 would
            # re-rank only k_factor candidates and miss what recall@10 promised
            kk = k if self.exact else min(max(k, TUNED_K), len(self))
            scores, ids = self.index.search(q, kk, params=self._params)
        finally:
            faiss.omp_set_num_threads(threads)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        order = np.lexsort((np.where(ids < 0, np.iinfo(np.int64).max, ids), -scores), axis=1)[:, :k]
        return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)

    # -- tuning --------------------------------------------------------------------------------------------
    def tune(
        self,
        queries: np.ndarray,
        truth: np.ndarray,
        *,
        target: float = 0.95,
        k: int = 10,
        exclude_self: np.ndarray | None = None,
    ) -> dict:
        """Choose nprobe (and k_factor with a refine codec) from held-out `queries` (Q, dim) and their exact top k
        `truth` (Q, k): the pair with the lowest measured search time whose recall@k reaches `target`, else the
        best recall found. exclude_self (Q,): each query's own id (queries taken from the index), dropped from
        both lists. Writes nprobe, k_factor, recall_at_10, recall_queries, search_ms into meta and returns meta."""
        if self.exact:
            self.meta.update(recall_at_10=1.0, recall_queries=len(queries))
            return self.meta
        # Aim 1.5 binomial standard errors above the target: a pair that just passes on these queries would miss
        # it on others about half the time (measured at 1 M: 0.951 on 200 tuning queries, 0.941 on 1,000 others).
        need = min(1.0, target + 1.5 * math.sqrt(target * (1 - target) / max(1, len(queries) * k)))
        nlist = self.meta["plan"]["nlist"]
        probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512) if p <= nlist] or [1]
        kfs = K_FACTORS if self.meta["plan"]["codec"] else (None,)
        best = None  # (meets, -time or recall, nprobe, kf, recall, ms)
        faiss = _faiss()
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # time per query as `crema serve` searches: one thread
        try:
            best = self._grid(queries, truth, need, k, exclude_self, probes, kfs)
        finally:
            faiss.omp_set_num_threads(threads)
        _key, p, kf, r, ms = best
        self.meta.update(
            nprobe=p,
            k_factor=kf,
            recall_at_10=round(r, 4),
            recall_queries=len(queries),
            search_ms=round(ms, 3),
            recall_target=target,
            recall_aimed=round(need, 4),
        )
        self._set_params()
        return self.meta

    def _grid(self, queries, truth, target, k, exclude_self, probes, kfs) -> tuple:
        best = None
        for kf in kfs:
            for p in probes:
                self.meta["nprobe"], self.meta["k_factor"] = p, kf
                self._set_params()
                t0 = time.perf_counter()
                got, _ = self.search(queries, k + (exclude_self is not None))
                ms = (time.perf_counter() - t0) * 1000 / max(1, len(queries))
                if exclude_self is not None:
                    got = drop_self(got, exclude_self, k)
                r = recall_at(got, truth, k)
                key = (r >= target, -ms if r >= target else r)
                if best is None or key > best[0]:
                    best = (key, p, kf, r, ms)
                if r >= target:
                    break  # larger nprobe only costs more at this k_factor
        return best

    # -- files ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the index to `path` atomically (net.paths.atomic_path: temporary file beside it, fsync, rename)."""
        faiss = _faiss()
        path = Path(path)
        with atomic_path(path) as tmp:
            faiss.write_index(self.index, str(tmp))
        self.meta["file_bytes"] = path.stat().st_size

    @classmethod
    def load(cls, path: str | Path, meta: dict, *, mmap: bool = True) -> VectorIndex:
        """Read an index written by `save`; `meta` is its metadata (from the gallery manifest). mmap=True maps
        the flat codes from the file (read-only, shared between processes)."""
        faiss = _faiss()
        flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0
        try:
            index = faiss.read_index(str(path), flags)
        except RuntimeError as exc:
            raise ValueError(f"vector index {path}: unreadable ({str(exc).splitlines()[0][:200]})") from None
        if index.d != meta.get("dim") or index.ntotal != meta.get("count"):
            raise ValueError(
                f"vector index {path}: holds {index.ntotal} vectors of {index.d} floats, the manifest "
                f"says {meta.get('count')} of {meta.get('dim')}; rebuild it with `crema index`"
            )
        return cls(index, dict(meta), mapped=mmap)


def drop_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """found (Q, k+1) -> (Q, k): each row without its query's own id (else its last entry)."""
    out = np.empty((len(found), k), dtype=found.dtype)
    for r, (row, o) in enumerate(zip(found, own)):
        rest = row[row != o]
        out[r] = rest[:k] if len(rest) >= k else np.pad(rest, (0, k - len(rest)), constant_values=-1)
    return out
