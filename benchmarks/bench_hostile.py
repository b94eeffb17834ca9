"""Hostile load on `crema serve` (127.0.0.1 only): server memory and /api/health latency under bombs, slow bodies and
many-part bodies, each load bounded in count and time.

    python -m benchmarks.bench_hostile                        # LeNet, every phase (~1.5 minutes on 2 cores)
    python -m benchmarks.bench_hostile --phases bomb,parts    # some phases: bomb, lie, slow, parts
    python -m benchmarks.bench_hostile --repo /tmp/old-crema  # the server from another checkout (before/after)

The server runs as a subprocess (`python -m crema serve --model lenet --no-web`, cwd and PYTHONPATH = --repo,
a cache folder kept between runs so the MNIST gallery is indexed once). While each phase runs, one thread GETs
/api/health every 50 ms (10 s timeout) and another uploads a valid 28x28 digit every 0.5 s; the server's resident
memory is sampled every 50 ms from /proc (VmRSS) and its kernel high-water mark (VmHWM, reset through
/proc/PID/clear_refs at each phase start) gives the exact peak. Phases, in order, each followed by --settle seconds
idle before the "after" memory is read:

    bomb    --bombs single-colour PNGs of 6324x6324 (~130 KB, 40 Mpx: under the pixel limit), --clients at once
    lie     --bombs JPEGs whose header claims 6000x6000 and that hold ~4 blocks of data, --clients at once
    slow    --slow uploads declaring 10 MB (within the upload limit) that stop 100 bytes short and wait for an answer
            (at most --slow-wait seconds, then the client hangs up)
    parts   --parts-senders clients each sending --parts-rounds bodies of 180,000 empty parts (9.2 MB)

A phase that is over in less than --min-seconds (5) sends its requests again, at most --max-rounds (20) times in all,
so /api/health is sampled under that load; the request count on each line is the total sent.

One line per phase: answers by status, the slowest answer, peak and after RSS, health p50/p99/max, valid uploads.
Targets (exit 1 when one is missed, unless --no-check): peak RSS < --max-rss-mb (1000), no health failure and health
p99 < 100 ms (not checked for `lie`: refused in a millisecond each, its repeated rounds are a flood of several hundred
requests per second, where health waits its turn as under a flood of valid uploads), every hostile request answered
within its client timeout with a 4xx or 503 ("reset" counts: a body refused unread), the bomb PNGs with 200 or 503,
and every valid upload answered 200. Raw numbers go to --out FILE as JSON (nothing is written otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("bomb", "lie", "slow", "parts")


# -- inputs --------------------------------------------------------------------------------------------------------
def bomb_png(side: int = 6324) -> bytes:
    """A single-colour RGB PNG of side x side pixels: ~130 KB that decode to 120 MB of pixels."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 90)).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def lying_jpeg(side: int = 6000) -> bytes:
    """A 16x16 grey baseline JPEG whose frame header is patched to claim side x side pixels (~330 bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buf, "JPEG")
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


def digit_png() -> bytes:
    from PIL import Image

    a = np.zeros((28, 28), dtype=np.uint8)
    a[6:22, 12:16] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


BOUNDARY = "crema-hostile-boundary"


def multipart(data: bytes, ctype: str = "image/png") -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="q"\r\nContent-Type: {ctype}\r\n\r\n'
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def many_parts(n: int = 180_000, boundary: str = "b") -> bytes:
    """n empty parts of 53 bytes each: 9.5 MB for 180,000, within the upload limit."""
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="f"\r\n\r\n\r\n'.encode()
    return part * n + f"--{boundary}--\r\n".encode()


# -- a raw HTTP/1.1 client (partial bodies, exact timing) ------------------------------------------------------------
async def post(
    port: int, body: bytes, *, boundary: str, length: int | None = None, timeout: float
) -> tuple[str, float]:
    """POST /api/search with `body` (all of it, then wait) declaring Content-Length `length` (default len(body)):
    ("200" / "408" / ..., "reset" when the server closed the connection without an answer we could read (it
    refused the body unread), "timeout" or "error: ..."), and seconds until then. The answer is read while the
    body is still being written, as a browser does."""
    t0 = time.perf_counter()
    head = (
        f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {length or len(body)}\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None

    async def send() -> None:
        assert writer is not None
        writer.write(head)
        for i in range(0, len(body), 1 << 20):
            writer.write(body[i : i + (1 << 20)])
            await writer.drain()
        await asyncio.Event().wait()  # a slow client: never finishes its body

    async def exchange() -> str:
        nonlocal writer
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sender = asyncio.ensure_future(send())
        try:
            line = await reader.readline()
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if not line:
            return "reset"
        return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "error: no status line"

    try:
        status = await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        status = "timeout"
    except ConnectionError:
        status = "reset"
    except OSError as exc:
        status = f"error: {type(exc).__name__}"
    finally:
        if writer is not None:
            writer.close()
    return status, time.perf_counter() - t0


async def run_clients(port: int, bodies: list[tuple[bytes, int | None, str]], clients: int, timeout: float) -> list:
    """Each (body, declared length, boundary) POSTed once, `clients` at a time: [(status, seconds)]."""
    queue = list(enumerate(bodies))
    out: list = [None] * len(bodies)

    async def worker() -> None:
        while queue:
            i, (body, length, boundary) = queue.pop(0)
            out[i] = await post(port, body, boundary=boundary, length=length, timeout=timeout)

    await asyncio.gather(*[worker() for _ in range(clients)])
    return out


# -- watchers ------------------------------------------------------------------------------------------------------
def proc_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class Watch:
    """RSS samples, /api/health latencies and valid-upload answers while a phase runs (threads)."""

    def __init__(self, pid: int, port: int, upload: bytes) -> None:
        self.pid, self.port, self.upload = pid, port, upload
        self.rss_mb: list[float] = []
        self.health_ms: list[float] = []
        self.health_fail = 0
        self.valid: list[tuple[str, float]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._rss, self._health, self._valid)]

    def start(self) -> None:
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM: the kernel's exact peak for this phase
        except OSError:
            pass
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)
        self.peak_mb = max(proc_kb(self.pid, "VmHWM") / 1024, max(self.rss_mb, default=0.0))

    def _rss(self) -> None:
        while not self._stop.wait(0.05):
            self.rss_mb.append(proc_kb(self.pid, "VmRSS") / 1024)

    def _health(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        while not self._stop.wait(0.05):
            t0 = time.perf_counter()
            try:
                conn.request("GET", "/api/health")
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            self.health_ms.append(1000 * (time.perf_counter() - t0))
            self.health_fail += not ok
        conn.close()

    def _valid(self) -> None:
        body = multipart(self.upload)
        while not self._stop.wait(0.5):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/search", body, {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
                r = conn.getresponse()
                r.read()
                status = str(r.status)
            except (OSError, http.client.HTTPException) as exc:
                status = f"error: {type(exc).__name__}"
            finally:
                conn.close()
            self.valid.append((status, time.perf_counter() - t0))


# -- phases --------------------------------------------------------------------------------------------------------
def run_phase(name: str, proc: subprocess.Popen, port: int, args: argparse.Namespace, upload: bytes) -> dict:
    if name == "bomb":
        png = multipart(bomb_png())
        bodies, clients, timeout = [(png, None, BOUNDARY)] * args.bombs, args.clients, args.timeout
        what = "bomb PNG 6324x6324"
    elif name == "lie":
        jpg = multipart(lying_jpeg(), "image/jpeg")
        bodies, clients, timeout = [(jpg, None, BOUNDARY)] * args.bombs, args.clients, args.timeout
        what = "lying JPEG 6000x6000"
    elif name == "slow":
        short = multipart(b"\xff" * 9_990_000)[:-100]
        bodies, clients, timeout = [(short, len(short) + 100, BOUNDARY)] * args.slow, args.slow, args.slow_wait
        what = "10 MB upload 100 bytes short"
    else:
        parts = many_parts()
        bodies = [(parts, None, "b")] * (args.parts_senders * args.parts_rounds)
        clients, timeout = args.parts_senders, args.timeout
        what = f"{len(parts) / 1e6:.1f} MB of 180,000 empty parts"
    w = Watch(proc.pid, port, upload)
    w.start()
    try:
        t0 = time.perf_counter()
        answers, rounds = [], 0
        while True:  # quick phases repeat, so that health is sampled under load for --min-seconds
            answers += asyncio.run(run_clients(port, bodies, clients, timeout))
            rounds += 1
            if name == "slow" or rounds >= args.max_rounds or time.perf_counter() - t0 >= args.min_seconds:
                break
        wall = time.perf_counter() - t0
    finally:
        w.stop()
    time.sleep(args.settle)
    after = proc_kb(proc.pid, "VmRSS") / 1024
    h = np.array(w.health_ms or [np.nan])
    return {
        "phase": name,
        "what": what,
        "requests": len(answers),
        "clients": clients,
        "timeout_s": timeout,
        "statuses": dict(Counter(s for s, _ in answers)),
        "slowest_s": max(t for _, t in answers),
        "wall_s": wall,
        "rss_peak_mb": w.peak_mb,
        "rss_after_mb": after,
        "health_n": len(w.health_ms),
        "health_fail": w.health_fail,
        "health_p50_ms": float(np.percentile(h, 50)),
        "health_p99_ms": float(np.percentile(h, 99)),
        "health_max_ms": float(h.max()),
        "valid": dict(Counter(s for s, _ in w.valid)),
        "valid_max_s": max((t for _, t in w.valid), default=0.0),
    }


def check(r: dict, args: argparse.Namespace) -> list[str]:
    """The targets this phase missed (module docstring)."""
    bad = []
    if r["rss_peak_mb"] >= args.max_rss_mb:
        bad.append(f"peak RSS {r['rss_peak_mb']:.0f} MB >= {args.max_rss_mb} MB")
    if r["health_fail"] or (r["phase"] != "lie" and r["health_p99_ms"] >= 100):
        bad.append(f"health p99 {r['health_p99_ms']:.0f} ms, {r['health_fail']} failures")
    allowed = {"bomb": {"200", "503"}}.get(r["phase"], None)
    for status, n in r["statuses"].items():  # "reset": refused unread (a 413/503 whose answer the RST overtook)
        ok = status in allowed if allowed else (status == "reset" or status.startswith("4") or status == "503")
        if not ok:
            bad.append(f"{n} answers {status}")
    if set(r["valid"]) - {"200"}:
        bad.append(f"valid uploads answered {r['valid']}")
    return bad


def line(r: dict) -> str:
    statuses = " ".join(f"{k}:{v}" for k, v in sorted(r["statuses"].items()))
    valid = " ".join(f"{k}:{v}" for k, v in sorted(r["valid"].items())) or "-"
    return (
        f"{r['phase']:<5} {r['what']:<34} x{r['requests']:<3} ({r['clients']:>2} at once) | {statuses:<16} | "
        f"slowest {r['slowest_s']:5.1f} s | RSS peak {r['rss_peak_mb']:5.0f} MB after {r['rss_after_mb']:5.0f} MB | "
        f"health p50 {r['health_p50_ms']:5.1f} p99 {r['health_p99_ms']:6.1f} max {r['health_max_ms']:6.1f} ms "
        f"({r['health_fail']} failed) | valid uploads {valid} (max {r['valid_max_s']:.2f} s)"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    repo = Path(args.repo).resolve()
    cmd = [sys.executable, "-m", "crema", "serve", "--host", "127.0.0.1", "--port", str(port), "--no-web",
           "--model", args.model, "--cache", str(args.cache), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(repo)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=repo, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise SystemExit(f"server not ready after {args.start_timeout:.0f} s:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repo", default=str(ROOT), help="checkout to run the server from (default: this one)")
    p.add_argument("--model", default="lenet")
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "crema-bench-hostile-cache"))
    p.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    p.add_argument("--bombs", type=int, default=32, help="bomb PNGs, and lying JPEGs (default 32)")
    p.add_argument("--clients", type=int, default=16, help="bombs in flight at once (default 16)")
    p.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s (default 60)")
    p.add_argument("--slow", type=int, default=40, help="slow uploads at once (default 40)")
    p.add_argument("--slow-wait", type=float, default=45.0, help="how long a slow upload waits for an answer, s")
    p.add_argument("--parts-senders", type=int, default=4)
    p.add_argument("--parts-rounds", type=int, default=10)
    p.add_argument("--settle", type=float, default=5.0, help="idle seconds after a phase before 'after' RSS")
    p.add_argument("--min-seconds", type=float, default=5.0, help="repeat a quicker phase's requests this long")
    p.add_argument("--max-rounds", type=int, default=20, help="... at most this many times (default 20)")
    p.add_argument("--max-rss-mb", type=int, default=1000)
    p.add_argument("--start-timeout", type=float, default=600.0)
    p.add_argument("--no-check", action="store_true", help="report only; exit 0 even when a target is missed")
    p.add_argument("--out", help="write the JSON results here")
    args = p.parse_args(argv)
    phases = [s.strip() for s in args.phases.split(",") if s.strip()]
    if not phases or set(phases) - set(PHASES) or min(args.bombs, args.clients, args.slow, args.parts_senders) < 1:
        p.error(f"--phases takes {', '.join(PHASES)}; counts must be >= 1")
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkdtemp(prefix="crema-bench-hostile-")) / "serve.log"
    proc, port = start_server(args, log)
    results, failures = [], []
    try:
        time.sleep(1.0)
        rss0 = proc_kb(proc.pid, "VmRSS") / 1024
        print(f"# {args.model} server from {args.repo}, {os.cpu_count()} CPUs, idle RSS {rss0:.0f} MB", flush=True)
        upload = digit_png()
        for name in phases:
            r = run_phase(name, proc, port, args, upload)
            r["rss_idle_mb"] = rss0
            results.append(r)
            print(line(r), flush=True)
            failures += [f"{name}: {b}" for b in check(r, args)]
            if proc.poll() is not None:
                failures.append(f"{name}: the server exited with {proc.returncode}")
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    tracebacks = log.read_text(errors="replace").count("Traceback")
    print(f"server log {log}: {tracebacks} tracebacks")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"cpus": os.cpu_count(), "loadavg": os.getloadavg(),
                                              "tracebacks": tracebacks, "results": results}, indent=1))  # fmt: skip
    for f in failures:
        print(f"MISSED {f}", file=sys.stderr)
    return 1 if failures and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
