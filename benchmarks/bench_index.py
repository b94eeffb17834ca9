"""The gallery at scale: FAISS search at 10 k / 100 k / 1 M vectors, and indexing throughput local vs Ray.

    python -m benchmarks.bench_index                         # search at 10k, 100k, 1M + indexing, ~10 min on 2 cores
    python -m benchmarks.bench_index --sizes 10000 100000    # search only at these sizes
    python -m benchmarks.bench_index --skip-search --images 3000 --ray-workers 2 --photos 256
    python -m benchmarks.bench_index --publish               # raw numbers into benchmarks/results/index.json

Search. Vectors of the default model's feature size (EfficientNet-Lite0's 1280-d pooled head), synthetic and
clustered like CNN features: 2,000 cluster centres share a common positive mean (pooled activations are >= 0, so
unrelated images still have a clearly positive cosine), each point is its centre plus noise of about half the
centre's norm with a power-law spectrum (variance of direction j ~ 1/j over a random 256-d basis) plus 5% isotropic
noise, clipped at 0 (ReLU) and L2-normalised; cluster sizes follow a Zipf-like law (p ~ rank^-0.8). Measured on 2,000
points: cosine between random pairs 0.58 mean (5-95%: 0.44-0.69), to the nearest neighbour 0.85, 29% zeros. Queries (1,000) are drawn from the same process and are not in
the index. The index is what `crema index` builds (`server.vector_index.plan_index` with --memory-budget, default
1.5 GB), tuned for recall@10 >= 0.95 on 500 *other* held-out queries; the 1,000 timed queries are then searched one
at a time (as `crema serve` does for one request); p50 / p99 are per query. Exact search (IndexFlatIP, one query at
a time) on the same vectors gives the truth and the comparison time. RAM: the FAISS file size (the index is read
whole into memory without mmap) and the process's RSS growth when it is loaded.

Indexing. --images MNIST test digits written as PNG files (net.datasets), indexed with the trained LeNet by the local
engine and by Ray with --ray-workers actors on a local Ray of as many CPUs (first run: actors start and load the
kernels; second run: the steady state); images/s from the start of the run to the written index, and the two
engines' features compared bit for bit. --photos 640x480 JPEGs indexed with the default model (EfficientNet-Lite0):
the per-image cost from which the 100 M projection table is printed (linear in machines, times the measured Ray
factor; index sizes from server.vector_index.plan_index).

Exit status 1 when an approximate index misses recall@10 0.95 on the timed queries, the memory-mapped index answers
differently, or the two engines' features differ.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "index.json"
DIM = 1280  # EfficientNet-Lite0's feature blob (the classifier's input: 1280-d after global pooling)


class Synthetic:
    """Clustered, non-negative, L2-normalised vectors (see the module docstring), generated in chunks from seeds
    so 1 M x 1280 never sits in memory twice."""

    def __init__(self, dim: int = DIM, clusters: int = 2000, rank: int = 256, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim, self.rank, self.seed = dim, rank, seed
        basis, _ = np.linalg.qr(rng.standard_normal((dim, rank)))
        self.scale = (np.arange(1, rank + 1) ** -0.5).astype(np.float32)
        self.basis = (basis.T * 1.0).astype(np.float32)  # (rank, dim)
        mean = np.abs(rng.standard_normal(dim)).astype(np.float32)
        z = rng.standard_normal((clusters, rank)).astype(np.float32) * self.scale * 1.6
        self.centres = mean * 0.9 + z @ self.basis * np.linalg.norm(mean) / 4
        p = 1.0 / np.arange(1, clusters + 1) ** 0.8
        self.p = p / p.sum()

    def chunk(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, seed))
        c = rng.choice(len(self.centres), size=n, p=self.p)
        z = rng.standard_normal((n, self.rank)).astype(np.float32) * self.scale
        x = self.centres[c] + (z @ self.basis) * np.linalg.norm(self.centres[0]) / 5
        x += rng.standard_normal((n, self.dim)).astype(np.float32) * (
            np.linalg.norm(self.centres[0]) / 20 / np.sqrt(self.dim)
        )
        np.maximum(x, 0, out=x)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        return x

    def chunks(self, n: int, size: int = 100_000):
        for i, start in enumerate(range(0, n, size)):
            yield self.chunk(min(size, n - start), seed=i)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def bench_search(
    n: int, budget: float, queries: np.ndarray, tune_q: np.ndarray, workdir: Path, exact_queries: int = 100
) -> dict:
    import faiss

    from server.vector_index import VectorIndex, plan_index, recall_at

    gen = Synthetic()
    plan = plan_index(n, DIM, memory_budget=budget)
    t0 = time.perf_counter()
    sample = None
    if not plan.exact:
        sample = gen.chunk(min(n, plan.train_size), seed=10_000)  # a training sample from the same process
    vi = VectorIndex.create(plan, sample)
    del sample
    train_s = time.perf_counter() - t0
    flat = faiss.IndexFlatIP(DIM)  # the exact reference, filled in the same pass
    add_s = 0.0
    for c in gen.chunks(n):
        t0 = time.perf_counter()
        vi.add(c)
        add_s += time.perf_counter() - t0
        flat.add(c)
    t0 = time.perf_counter()
    _, truth_tune = flat.search(tune_q, 10)
    _, truth = flat.search(queries, 10)
    truth_s = time.perf_counter() - t0
    faiss.omp_set_num_threads(1)
    exact_ms = []
    for q in queries[:exact_queries]:  # exact search one query at a time, one thread, as the server would
        t = time.perf_counter()
        flat.search(q[None], 10)
        exact_ms.append((time.perf_counter() - t) * 1000)
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    del flat
    vi.tune(tune_q, truth_tune, target=0.95)
    path = workdir / f"v{n}.faiss"
    vi.save(path)
    meta = dict(vi.meta)
    del vi
    before = rss_mb()
    vi = VectorIndex.load(path, meta, mmap=False)
    rss = rss_mb() - before
    lat, cpu, found = [], [], []
    for q in queries:
        t, c = time.perf_counter(), time.thread_time()
        ids, _ = vi.search(q[None], 10)
        cpu.append((time.thread_time() - c) * 1000)  # CPU time of this thread: without waits for a busy core
        lat.append((time.perf_counter() - t) * 1000)
        found.append(ids[0])
    recall = recall_at(np.array(found), truth, 10)
    del vi
    mapped = VectorIndex.load(path, meta, mmap=True)
    ids_m, _ = mapped.search(queries[:50], 10)
    same_mapped = bool(np.array_equal(ids_m, np.array(found[:50])))
    del mapped
    lat = np.array(lat)
    return {
        "n": n,
        "dim": DIM,
        "factory": meta["factory"],
        "nprobe": meta["nprobe"],
        "k_factor": meta["k_factor"],
        "recall_at_10": recall,
        "tuned_recall_at_10": meta["recall_at_10"],
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "cpu_p50_ms": float(np.percentile(cpu, 50)),
        "cpu_p99_ms": float(np.percentile(cpu, 99)),
        "exact_p50_ms": float(np.percentile(exact_ms, 50)),
        "exact_p99_ms": float(np.percentile(exact_ms, 99)),
        "exact_queries": len(exact_ms),
        "file_mb": path.stat().st_size / 1e6,
        "rss_growth_mb": rss,
        "plan_mb": plan.bytes / 1e6,
        "train_s": train_s,
        "add_s": add_s,
        "truth_s": truth_s,
        "mmap_same_ids": same_mapped,
    }


def search_line(r: dict) -> str:
    return (
        f"search n={r['n']:>9,} d={r['dim']} {r['factory']:<32} nprobe={r['nprobe']!s:>4} kf={r['k_factor']!s:>3}"
        f" | recall@10 {r['recall_at_10']:.3f} | p50 {r['p50_ms']:6.2f} ms p99 {r['p99_ms']:6.2f} ms"
        f" (CPU p99 {r['cpu_p99_ms']:5.2f})"
        f" | exact p50 {r['exact_p50_ms']:7.2f} ms | index {r['file_mb']:7.1f} MB (RSS +{r['rss_growth_mb']:.0f})"
        f" | build {r['train_s'] + r['add_s']:.0f} s"
    )


def bench_engines(images: int, workers: int, shard_size: int = 256) -> dict:
    """Index `images` MNIST test digits (written as PNG files, label folders) with the trained LeNet, local engine
    then Ray with `workers` actors; check the features are equal bit for bit."""
    import shutil

    from PIL import Image

    from net.datasets import load_mnist
    from server.indexing import index_source, read_source, shard_features
    from server.model import Model

    digits, labels = load_mnist("test")
    lenet = ROOT / "models" / "lenet"
    model = Model.load(lenet / "deploy.prototxt", lenet / "lenet.caffemodel", lenet / "labels.txt")
    res: dict = {"images": images, "model": "lenet (trained)", "shard_size": shard_size, "ray_workers": workers}
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "mnist"
        for i in range(images):
            (root / str(labels[i])).mkdir(parents=True, exist_ok=True)
            Image.fromarray(digits[i]).save(root / str(labels[i]) / f"{i:05d}.png")
        source = read_source(root)
        model.infer(np.stack([model.preprocess(digits[0])]))  # compile / load the kernels before timing
        t0 = time.perf_counter()
        index_source(source, model, Path(d) / "local", shard_size=shard_size, progress=False)
        res["local_s"] = time.perf_counter() - t0
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        res["ray_init_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index_source(
            source, model, Path(d) / "ray", engine="ray", workers=workers, shard_size=shard_size, progress=False
        )
        res["ray_s"] = time.perf_counter() - t0
        # a second Ray run on warm actors' machine (Numba caches loaded, workers up): the steady state
        shutil.rmtree(Path(d) / "ray")
        t0 = time.perf_counter()
        index_source(
            source, model, Path(d) / "ray", engine="ray", workers=workers, shard_size=shard_size, progress=False
        )
        res["ray_warm_s"] = time.perf_counter() - t0
        ray.shutdown()
        shards = sorted((Path(d) / "local" / "shards").glob("*.npy"))
        res["bit_equal"] = all(
            np.array_equal(shard_features(Path(d) / "local", int(f.stem)), shard_features(Path(d) / "ray", int(f.stem)))
            for f in shards
        )
    for k in ("local", "ray", "ray_warm"):
        res[f"{k}_img_s"] = images / res[f"{k}_s"]
    print(
        f"indexing {images} MNIST PNGs, LeNet, shards of {shard_size} | local {res['local_img_s']:7.1f} img/s "
        f"| ray x{workers} {res['ray_img_s']:7.1f} img/s (warm {res['ray_warm_img_s']:.1f}; ray.init "
        f"{res['ray_init_s']:.1f} s) | features equal: {res['bit_equal']}",
        flush=True,
    )
    return res


def bench_photos(count: int) -> dict:
    """Index `count` 640x480 JPEG photos (smooth random colour fields, made here) with the default model
    (EfficientNet-Lite0, local engine): the per-image cost the 100 M projection starts from."""
    import argparse as _argparse

    from PIL import Image

    from server.cli import load_model
    from server.indexing import index_source, read_source

    none = {k: None for k in ("model", "weights", "labels", "preset", "feature_blob", "cache", "memory_budget")}
    model = load_model(_argparse.Namespace(**none))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "photos"
        root.mkdir()
        for i in range(count):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC)
            img.save(root / f"{i:05d}.jpg", quality=90)
        model.infer(np.stack([model.preprocess(np.zeros((224, 224, 3), np.uint8))]))  # kernels loaded before timing
        t0 = time.perf_counter()
        index_source(read_source(root), model, Path(d) / "idx", progress=False)
        sec = time.perf_counter() - t0
    res = {"photos": count, "model": model.name, "dim": model.feature_dim, "s": sec, "img_s": count / sec}
    print(
        f"indexing {count} 640x480 JPEGs, {model.name} ({model.feature_dim}-d), local engine | {res['img_s']:6.1f} "
        f"img/s ({1000 * sec / count:.1f} ms per image)",
        flush=True,
    )
    return res


def projection(photos: dict, engines: dict | None, images: int = 100_000_000, machines=(1, 10, 100, 1000)) -> str:
    """The 100 M table (Markdown) from the measured per-image cost of the default model plus Ray's measured overhead
    per image (the slower Ray run minus the local run, on MNIST), linear in machines; index sizes from
    server.vector_index.plan_index."""
    from server.vector_index import plan_index

    over = 0.0
    if engines:
        over = max(0.0, 1 / min(engines["ray_img_s"], engines["ray_warm_img_s"]) - 1 / engines["local_img_s"])
    per_image = 1 / photos["img_s"] + over  # seconds of one 2-vCPU machine per image, on Ray
    dim = photos["dim"]
    lines = [
        f"| machines (2 vCPU each, {1000 * per_image:.0f} ms per image) | images/s on Ray | 100 M images in |",
        "| ---: | ---: | ---: |",
    ]
    for m in machines:
        rate = m / per_image
        hours = images / rate / 3600
        took = f"{hours / 24:,.1f} days" if hours > 48 else f"{hours:,.1f} h"
        lines.append(f"| {m:,} | {rate:,.0f} | {took} |")
    lines += [
        "",
        f"| what, for 100 M images of {dim} floats | size |",
        "| --- | ---: |",
        f"| feature shards on disk (float32) | {images * dim * 4 / 1e9:,.0f} GB |",
        f"| exact index (Flat), in RAM | {images * dim * 4 / 1e9:,.0f} GB |",
    ]
    for budget in (200e9, 10e9):
        plan = plan_index(images, dim, memory_budget=budget)
        lines.append(f"| `{plan.factory}` (budget {budget / 1e9:.0f} GB), in RAM | {plan.bytes / 1e9:,.0f} GB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_index",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    p.add_argument("--memory-budget-gb", type=float, default=1.5)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--skip-search", action="store_true")
    p.add_argument("--images", type=int, default=3000, help="MNIST digits for the indexing benchmark (0: skip)")
    p.add_argument("--ray-workers", type=int, default=2)
    p.add_argument("--photos", type=int, default=256, help="photos indexed with the default model (0: skip)")
    p.add_argument("--publish", action="store_true", help=f"write the raw numbers to {RESULTS.relative_to(ROOT)}")
    args = p.parse_args(argv)
    load = os.getloadavg()[0]
    out: dict = {
        "machine": f"{os.cpu_count()} cores shared with other jobs (load average {load:.1f} at start)",
        "search": [],
        "indexing": None,
        "photos": None,
    }
    ok = True
    if not args.skip_search:
        gen = Synthetic()
        queries = gen.chunk(args.queries, seed=20_000)
        tune_q = gen.chunk(500, seed=30_000)
        with tempfile.TemporaryDirectory() as d:
            for n in args.sizes:
                r = bench_search(
                    n, args.memory_budget_gb * 1e9, queries, tune_q, Path(d), exact_queries=100 if n <= 100_000 else 20
                )
                out["search"].append(r)
                print(search_line(r), flush=True)
                ok &= r["mmap_same_ids"] and (r["recall_at_10"] >= 0.95 or r["factory"] == "Flat")
    if args.images:
        out["indexing"] = bench_engines(args.images, args.ray_workers)
        ok &= out["indexing"]["bit_equal"]
    if args.photos:
        out["photos"] = bench_photos(args.photos)
    if args.publish or out.get("photos"):
        merged = json.loads(RESULTS.read_text()) if args.publish and RESULTS.is_file() else {}
        merged.update({k: v for k, v in out.items() if v})
        if merged.get("photos"):
            print(projection(merged["photos"], merged.get("indexing")))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.publish:  # merge: a run of one part keeps the other part's last figures
        old = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
        by_n = {r["n"]: r for r in old.get("search", [])} | {r["n"]: r for r in out["search"]}
        old.update({k: v for k, v in out.items() if v})
        old["search"] = [by_n[n] for n in sorted(by_n)]  # a size measured again replaces its row only
        RESULTS.write_text(json.dumps(old, indent=1))
        print(f"wrote {RESULTS}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
