"""server.vector_index: the plan from size and budget, exact search against a NumPy reference, an approximate index
tuned to its recall target on held-out queries, incremental add, memory-mapped load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from server.vector_index import VectorIndex, drop_self, exact_topk, plan_index, recall_at


def clustered(n: int, dim: int, seed: int, clusters: int = 50) -> np.ndarray:
    """Unit vectors around `clusters` centres (fixed by seed 0), so neighbours are meaningful."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_plan_from_size_and_budget():
    assert plan_index(10_000, 1280, memory_budget=1.5e9).exact  # 51 MB: exact
    p = plan_index(1_000_000, 1280, memory_budget=1.5e9)
    assert p.factory == "IVF1024,PQ128x4fs,Refine(SQ8)" and p.bytes <= 1.5e9  # fp16 codes (2.6 GB) do not fit
    assert plan_index(1_000_000, 1280, memory_budget=4e9).codec == "SQfp16"
    assert plan_index(1_000_000, 1280, memory_budget=1.1e9).codec == "SQ6"
    assert plan_index(1_000_000, 1280, memory_budget=1e9).codec == "SQ4"
    assert plan_index(1_000_000, 1280, memory_budget=0.2e9).codec is None  # PQ alone
    assert plan_index(200_000, 500, memory_budget=4e9).factory.startswith("IVF512,PQ50x4fs")
    with pytest.raises(ValueError, match="over the memory budget"):
        plan_index(100, 1280, memory_budget=1000)


def test_exact_topk_streams_like_numpy():
    x, q = clustered(500, 16, 1), clustered(7, 16, 2)
    ids, scores = exact_topk(q, [x[:123], x[123:400], x[400:]], 10)
    ref = q.astype(np.float64) @ x.T.astype(np.float64)
    order = np.argsort(-ref, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(ids, order)
    np.testing.assert_allclose(scores, np.take_along_axis(ref, order, axis=1), rtol=0, atol=1e-5)
    assert recall_at(ids, order) == 1.0 and recall_at(ids[:, ::-1][:, :5], order[:, :5], 5) < 1.0
    np.testing.assert_array_equal(drop_self(np.array([[3, 1, 2], [5, 6, 7]]), np.array([1, 9]), 2), [[3, 2], [5, 6]])


def test_flat_search_incremental_and_mmap(tmp_path):
    x = clustered(300, 32, 3)
    vi = VectorIndex.create(plan_index(300, 32, memory_budget=1e9))
    vi.add(x[:100])
    vi.add(x[100:])  # incremental: ids continue
    q = clustered(5, 32, 4)
    ids, scores = vi.search(q, 8)
    ref_ids, ref_scores = exact_topk(q, [x], 8)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=0, atol=1e-5)
    assert vi.search(q, 1000)[0].shape == (5, 300) and vi.search(q, 0)[0].shape == (5, 0)
    vi.save(tmp_path / "v.faiss")
    mapped = VectorIndex.load(tmp_path / "v.faiss", vi.meta, mmap=True)
    assert mapped.mapped and np.array_equal(mapped.search(q, 8)[0], ids)
    with pytest.raises(ValueError, match="read-only"):
        mapped.add(x[:1])
    with pytest.raises(ValueError, match=r"expected \(N, 32\)"):
        vi.search(q[:, :5], 3)
    with pytest.raises(ValueError, match="the manifest says 301"):
        VectorIndex.load(tmp_path / "v.faiss", {**vi.meta, "count": 301})
    (tmp_path / "bad.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="unreadable"):
        VectorIndex.load(tmp_path / "bad.faiss", vi.meta)


def test_approximate_index_meets_its_recall_target(tmp_path):
    """20,000 clustered 64-d vectors with a small flat limit: IVF + fast-scan PQ + SQ refine, tuned on 100 held-out
    queries, reaches recall@10 >= 0.95 on 200 other held-out queries too; the mapped copy answers the same."""
    n, dim = 20_000, 64
    x = clustered(n, dim, 5)
    plan = plan_index(n, dim, memory_budget=1e9, flat_max_bytes=1_000_000)
    assert not plan.exact and plan.codec == "SQfp16"
    vi = VectorIndex.create(plan, x[: plan.train_size])
    for s in range(0, n, 7_000):
        vi.add(x[s : s + 7_000])
    tune_q, test_q = clustered(100, dim, 6), clustered(200, dim, 7)
    meta = vi.tune(tune_q, exact_topk(tune_q, [x], 10)[0], target=0.95)
    assert meta["recall_at_10"] >= 0.95 and meta["recall_queries"] == 100 and meta["nprobe"] >= 1
    truth = exact_topk(test_q, [x], 10)[0]
    found, scores = vi.search(test_q, 10)
    assert recall_at(found, truth) >= 0.95
    assert np.all(np.diff(scores, axis=1) <= 0)  # best first
    vi.save(tmp_path / "ivf.faiss")
    mapped = VectorIndex.load(tmp_path / "ivf.faiss", vi.meta, mmap=True)
    np.testing.assert_array_equal(mapped.search(test_q, 10)[0], found)


_LOAD_RSS = """
import json, sys
from server.vector_index import VectorIndex

def rss():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))

path, meta, mmap = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3] == "1"
import faiss  # noqa: E402,F401 - loaded before the first reading (no freed pages to reuse: none are freed)
before = rss()
index = VectorIndex.load(path, meta, mmap=mmap)
print(rss() - before)
"""


def _load_growth_mb(path, meta, mmap: bool) -> float:
    """RSS growth of loading the index in a fresh process (in this one, freed pages make the figure meaningless)."""
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _LOAD_RSS, str(path), json.dumps(meta), "1" if mmap else "0"],
        capture_output=True, text=True, cwd=root, check=True, timeout=120,
    )  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_mmap_load_does_not_copy_the_vectors(tmp_path):
    """A 40 MB exact index: read, a process grows by ~40 MB; memory-mapped, by almost nothing (the pages stay in
    the page cache, shared by every process that maps the file, until a search touches them)."""
    x = np.random.default_rng(0).random((10_000, 1000), dtype=np.float32)
    vi = VectorIndex.create(plan_index(10_000, 1000, memory_budget=1e9))
    vi.add(x)
    vi.save(tmp_path / "v.faiss")
    meta = dict(vi.meta)
    grew_read = _load_growth_mb(tmp_path / "v.faiss", meta, mmap=False)
    grew_mapped = _load_growth_mb(tmp_path / "v.faiss", meta, mmap=True)
    assert grew_read > 30 and grew_mapped < 5, (grew_read, grew_mapped)
    mapped = VectorIndex.load(tmp_path / "v.faiss", meta, mmap=True)
    read = VectorIndex.load(tmp_path / "v.faiss", meta, mmap=False)
    q = np.random.default_rng(1).random((3, 1000), dtype=np.float32)
    np.testing.assert_array_equal(mapped.search(q, 5)[0], read.search(q, 5)[0])
