"""Load test of `crema serve` on loopback: N requests from C concurrent clients, with and without micro-batching.

    python -m benchmarks.bench_server                               # LeNet, 200 requests, 16 clients, both modes
    python -m benchmarks.bench_server --model caffenet --requests 64 --gallery-size 0
    python -m benchmarks.bench_server --modes batched --window-ms 2 --max-batch 16

For each mode the server runs as a subprocess (`python -m crema serve --no-web`, 127.0.0.1 only) on the model
(the trained LeNet when models/lenet/lenet.caffemodel exists, else random weights; CaffeNet always random
unless --weights is given) with a gallery index of --gallery-size images (MNIST test digits when
`net.datasets` has them, else synthetic digits). Every client uploads a PNG/JPEG from a fixed pool through
POST /api/search. Before timing, one answer is checked against the same model run in this process (exit 1
on a mismatch); --warmup requests are sent and not counted; any non-200 answer or transport error makes
the run fail (exit 1). One line per mode:

    lenet batched  (max 32, 5 ms) | 200 req x 16 clients | p50  21.3 ms | p99  48.0 ms |  612.4 req/s | mean batch 7.9 | 0 errors

Raw numbers go to benchmarks/results/server.json with --publish (or --out FILE). Client and server share the machine: on few cores the
client's own CPU use is part of what is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "server.json"
ZOO_MODEL = "efficientnet-lite0"  # the embedded default model: served by name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_files(name: str, weights: str | None, workdir: Path) -> dict[str, Path]:
    """prototxt / weights / labels for the model, writing random weights into workdir when needed (EfficientNet-Lite0:
    net.zoo's embedded model, `crema serve`'s default)."""
    from net import Net

    if name == ZOO_MODEL:
        from net.zoo import resolve

        z = resolve(name)
        return {"prototxt": z.prototxt, "weights": z.weights, "labels": z.labels, "preset": z.preset, "zoo": name}
    d = ROOT / "models" / name
    files = {"prototxt": d / "deploy.prototxt"}
    labels = [p for p in (d / "labels.txt", d / "synset_words.txt") if p.is_file()]
    files["labels"] = labels[0] if labels else None
    trained = d / "lenet.caffemodel" if name == "lenet" else None
    if weights:
        files["weights"] = Path(weights)
    elif trained is not None and trained.is_file():
        files["weights"] = trained
    else:
        net = Net.load(files["prototxt"], phase="test")
        rng = np.random.default_rng(0)
        for layer in net.params:
            w, *rest = net.params[layer]
            w[...] = rng.normal(0.0, np.sqrt(2.0 / w[0].size), size=w.shape)
            for b in rest:
                b[...] = rng.normal(0.0, 0.1, size=b.shape)
        files["weights"] = workdir / f"{name}-random.caffemodel"
        net.save(files["weights"])
    return files


def query_pool(model, n: int = 32) -> list[tuple[bytes, str]]:
    """n encoded images matching the model's input: digits (PNG) for 1 channel, noise photos (JPEG) for 3."""
    from PIL import Image

    rng = np.random.default_rng(1)
    pool = []
    c, h, w = model.input_shape
    for i in range(n):
        if c == 1:
            a = np.zeros((h, w), dtype=np.uint8)
            a[4 + i % 5 : h - 4, 8 + i % 7 : 8 + i % 7 + 4] = 255  # a bar at varying places
            img, fmt = Image.fromarray(a), "PNG"
        else:
            a = rng.integers(0, 256, (256, 320, 3), dtype=np.uint8)
            img, fmt = Image.fromarray(a), "JPEG"
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        pool.append((buf.getvalue(), f"image/{fmt.lower()}"))
    return pool


def build_gallery(model, size: int, out: Path) -> Path | None:
    from server.gallery import build_array_index

    if size <= 0:
        return None
    c, h, w = model.input_shape
    try:
        from net.datasets import load_mnist

        images, labels = load_mnist("test")
        if images.shape[1:] != (h, w) or c != 1:
            raise ValueError("not this model's input")
        images, labels = images[:size], labels[:size]
    except (ImportError, OSError, ValueError):
        if c != 1:
            raise SystemExit("--gallery-size > 0 needs a 1-channel model (or use 0 for CaffeNet)") from None
        rng = np.random.default_rng(2)
        images = (rng.random((size, h, w)) > 0.8).astype(np.uint8) * 255
        labels = None
    build_array_index(images, labels, model, out, name=f"bench-{size}", progress=True)
    return out


def start_server(files: dict, gallery: Path | None, batching: bool, args: argparse.Namespace, log: Path):
    port = free_port()
    model = (
        ["--model", files["zoo"]]
        if "zoo" in files
        else ["--model", str(files["prototxt"]), "--weights", str(files["weights"])]
    )
    cmd = [sys.executable, "-m", "crema", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-web", *model,
           "--log-level", "warning",
           "--max-batch", str(args.max_batch), "--batch-window-ms", str(args.window_ms),
           "--cache", str(log.parent / "cache")]  # fmt: skip
    if files["labels"] and "zoo" not in files:
        cmd += ["--labels", str(files["labels"])]
    if gallery is not None:
        cmd += ["--gallery", str(gallery)]
    if not batching:
        cmd.append("--no-batching")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    return proc, out, f"http://127.0.0.1:{port}"


async def wait_ready(url: str, proc: subprocess.Popen, log: Path, timeout: float = 300.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(timeout=5) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if (await c.get(f"{url}/api/health")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.25)
    raise SystemExit(f"server not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


async def load(url: str, pool: list[tuple[bytes, str]], requests: int, clients: int) -> dict:
    """`requests` POSTs from `clients` concurrent workers; latencies in ms, errors, wall time."""
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    batch_sizes: list[int] = []
    server_ms: dict[str, list[float]] = {}
    counter = iter(range(requests))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(c: httpx.AsyncClient) -> None:
        for i in counter:
            data, ctype = pool[i % len(pool)]
            t0 = time.perf_counter()
            try:
                r = await c.post("/api/search", files={"image": (f"q{i}", data, ctype)})
            except httpx.HTTPError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            latencies.append(1000.0 * (time.perf_counter() - t0))
            if r.status_code != 200:
                errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
            else:
                body = r.json()
                batch_sizes.append(body["batch_size"])
                for k, v in body["timings_ms"].items():
                    server_ms.setdefault(k, []).append(v)

    # TCP_NODELAY, as browsers set it (with Nagle on, a request written in two pieces can wait ~40 ms for the
    # server's delayed ACK)
    nodelay = httpx.AsyncHTTPTransport(limits=limits, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    async with httpx.AsyncClient(base_url=url, timeout=120, transport=nodelay) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(c) for _ in range(clients)])
        wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {
        "requests": requests,
        "clients": clients,
        "ok": len(batch_sizes),
        "errors": errors,
        "wall_s": wall,
        "req_per_s": len(batch_sizes) / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
        "mean_batch": float(np.mean(batch_sizes)) if batch_sizes else 0.0,
        "server_p50_ms": {k: float(np.median(v)) for k, v in server_ms.items()},
    }


async def check_answer(url: str, model, pool: list[tuple[bytes, str]]) -> None:
    """The server's top-5 for pool[0] against this process's own forward of the same model (atol 1e-5)."""
    import httpx

    data, ctype = pool[0]
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        r = await c.post("/api/search", files={"image": ("q", data, ctype)})
    if r.status_code != 200:
        raise SystemExit(f"reference check: HTTP {r.status_code}: {r.text[:300]}")
    probs = model.infer(model.preprocess(data)[None])[0][0]
    got = r.json()["predictions"]
    want = model.top(probs, len(got))
    if [p["index"] for p in got] != [p["index"] for p in want] or not np.allclose(
        [p["prob"] for p in got], [p["prob"] for p in want], rtol=0, atol=1e-5
    ):
        raise SystemExit(f"MISMATCH: server {got} vs reference {want}")


def run_mode(mode: str, files, gallery, model, pool, args, workdir: Path) -> dict:
    batching = mode == "batched"
    log = workdir / f"serve-{mode}.log"
    proc, out, url = start_server(files, gallery, batching, args, log)
    try:
        asyncio.run(wait_ready(url, proc, log))
        asyncio.run(check_answer(url, model, pool))
        if args.warmup:
            asyncio.run(load(url, pool, args.warmup, args.clients))
        result = asyncio.run(load(url, pool, args.requests, args.clients))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()
    result.update(mode=mode, model=args.model, max_batch=args.max_batch if batching else 1, threads=args.threads,
                  window_ms=args.window_ms if batching else 0.0, gallery_size=args.gallery_size)  # fmt: skip
    return result


def line(r: dict) -> str:
    how = f"(max {r['max_batch']}, {r['window_ms']:g} ms)" if r["mode"] == "batched" else "(one per forward)"
    return (
        f"{r['model']} {r['mode']:<9} {how:<18} | {r['requests']} req x {r['clients']} clients | "
        f"p50 {r['p50_ms']:7.1f} ms | p99 {r['p99_ms']:7.1f} ms | {r['req_per_s']:7.1f} req/s | "
        f"mean batch {r['mean_batch']:4.1f} | {len(r['errors'])} errors"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=["lenet", "caffenet", ZOO_MODEL], default="lenet")
    p.add_argument("--weights", help="weights for --model (default: trained LeNet if present, else random)")
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--warmup", type=int, default=32, help="requests sent first and not counted")
    p.add_argument("--modes", default="batched,unbatched", help="comma-separated: batched, unbatched")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--window-ms", type=float, default=5.0)
    p.add_argument("--gallery-size", type=int, default=10_000, help="gallery index size (0: none)")
    p.add_argument("--threads", type=int, help="the server's --threads (Numba threads for inference)")
    p.add_argument("--out", help="write the JSON results here")
    p.add_argument("--publish", action="store_true", help=f"write them to {RESULTS}")
    args = p.parse_args(argv)
    if args.publish and not args.out:
        args.out = str(RESULTS)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"batched", "unbatched"} or min(args.requests, args.clients) < 1:
        p.error("--modes takes batched and/or unbatched; --requests and --clients must be >= 1")

    from server.model import Model

    workdir = Path(tempfile.mkdtemp(prefix="crema-bench-server-"))
    try:
        files = model_files(args.model, args.weights, workdir)
        model = Model.load(files["prototxt"], files["weights"], files["labels"], preset=files.get("preset"))
        gallery = build_gallery(model, args.gallery_size, workdir / "gallery")
        pool = query_pool(model)
        print(
            f"# {args.model} ({files['weights'].name}), gallery {args.gallery_size}, {os.cpu_count()} CPUs", flush=True
        )
        results = []
        for mode in modes:
            r = run_mode(mode, files, gallery, model, pool, args, workdir)
            results.append(r)
            print(line(r), flush=True)
            for e in r["errors"][:5]:
                print(f"  error: {e}", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps({"cpus": os.cpu_count(), "loadavg": os.getloadavg(), "results": results}, indent=1)
        )
    if len(results) == 2:
        b, u = sorted(results, key=lambda r: r["mode"] != "batched")
        print(f"batched / unbatched throughput: {b['req_per_s'] / u['req_per_s']:.2f}x")
    return 1 if any(r["errors"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
