"""server.indexing: SOURCE kinds (folder, glob, txt / CSV / Parquet lists, URLs with the SSRF rules), error rows,
shards and resume, a SOURCE that changes, incremental add, a full disk, the old format; the Ray engine (a local
2-CPU Ray) gives the local engine's features bit for bit, also after one of its workers is killed mid-run."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from server import indexing
from server.gallery import Gallery, build_index
from server.indexing import index_source, read_source, shard_features
from tests.server.conftest import digit, png_bytes


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """30 digits in label folders + a broken PNG and a text file."""
    root = tmp_path_factory.mktemp("src")
    for d in range(10):
        (root / str(d)).mkdir()
        for dx in (-1, 0, 1):
            Image.fromarray(digit(d, dx)).save(root / str(d) / f"s{dx + 1}.png")
    (root / "5" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (root / "notes.txt").write_text("not an image")
    return root


def features(out: Path) -> np.ndarray:
    return np.concatenate([shard_features(out, int(f.stem)) for f in sorted((out / "shards").glob("*.npy"))])


def test_folder_shards_and_error_rows(model, folder, tmp_path):
    out, note = index_source(read_source(folder), model, tmp_path / "idx", shard_size=8, batch=3, progress=False)
    g = Gallery.load(out, model)
    assert len(g) == 30 and note == {"added": 31, "resumed_shards": 0, "missing_from_source": 0}
    assert [s["rows"] for s in g.manifest["shards"]] == [8, 8, 8, 7] and g.manifest["errors"] == 1
    assert g.manifest["skipped"][0]["path"] == "5/broken.png" and "5/broken.png" not in [it["path"] for it in g.items]
    assert not (out / "run.json").exists() and g.manifest["vectors"]["factory"] == "Flat"
    assert g.vectors.mapped  # served memory-mapped (shared between server processes)
    # each shard's features are its images run through the net in batches of 3 in order: equal bits
    rows = json.loads((out / "shards" / "000002.json").read_text())["rows"]
    ok = [r for r in rows if not r["error"]]
    x = np.stack([model.preprocess((folder / r["path"]).read_bytes()) for r in ok])
    want = np.concatenate([model.infer(x[s : s + 3])[1] for s in range(0, len(x), 3)])
    assert np.array_equal(shard_features(out, 2), want)
    assert g.items[29]["path"] == "9/s2.png" and g.search(g.features[12], k=1)[0]["id"] == 12


def test_list_sources_glob_and_urls(model, folder, tmp_path, local_http):
    pngs = {f"/{d}.png": png_bytes(digit(d)) for d in range(3)}
    srv = local_http(lambda p: (200, {"Content-Type": "image/png"}, pngs[p]) if p in pngs else (404, {}, b""))
    lst = tmp_path / "list.txt"
    lst.write_text(
        f"# digits\n{folder}/1/s0.png\n1/s1.png\n{srv.url}/0.png\n{srv.url}/9.png\n\n1/s1.png\nmissing.png\n"
    )
    (tmp_path / "1").mkdir()
    Image.fromarray(digit(1, 1)).save(tmp_path / "1" / "s1.png")
    src = read_source(lst)
    assert src.kind == "list" and len(src) == 6 and src.errors == {4: "duplicate of item #1 (1/s1.png)"}
    out, _ = index_source(src, model, tmp_path / "a", progress=False, allow_private_urls=True)
    g = Gallery.load(out, model)
    assert [it["path"] for it in g.items] == [f"{folder}/1/s0.png", "1/s1.png", f"{srv.url}/0.png"]
    errors = {s["path"]: s["error"] for s in g.manifest["skipped"]}
    assert "404" in errors[f"{srv.url}/9.png"] and "duplicate" in errors["1/s1.png"] and "missing.png" in errors
    assert g.thumbnail(2)[1] == "image/png"
    with pytest.raises(KeyError, match="not available"):
        g.image(2)  # a URL item has a thumbnail only
    # without allow_private_urls, scraper.fetch refuses 127.0.0.1 (SSRF): an error row, not a fetch
    out, _ = index_source(src, model, tmp_path / "b", progress=False)
    assert any("fetch failed" in s["error"] for s in Gallery.load(out).manifest["skipped"])
    csv = tmp_path / "l.csv"
    csv.write_text(f"label,path\none,{folder}/1/s0.png\nseven,{folder}/7/s1.png\n")
    assert read_source(csv).labels == ["one", "seven"]
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"url": [f"{folder}/2/s0.png"], "label": ["two"]}), tmp_path / "l.parquet")
    assert read_source(tmp_path / "l.parquet").refs == [f"{folder}/2/s0.png"]
    src = read_source(f"{folder}/*/s1.png")
    assert src.kind == "glob" and src.refs[:2] == ["0/s1.png", "1/s1.png"] and len(src) == 10
    for bad, msg in ((tmp_path / "nope", "not a directory"), (tmp_path / "x.bin", "not a folder"), ("/no/*.jpg", "no")):
        Path(tmp_path / "x.bin").write_bytes(b"")
        with pytest.raises(ValueError, match=msg):
            read_source(bad)


def test_resume_after_a_crash_and_a_changed_source(model, folder, tmp_path):
    src = read_source(folder)
    full, _ = index_source(src, model, tmp_path / "full", shard_size=8, progress=False)

    def crash(no, n):
        if no == 1:
            raise KeyboardInterrupt  # the run stops after its second shard

    with pytest.raises(KeyboardInterrupt):
        index_source(src, model, tmp_path / "cut", shard_size=8, progress=False, on_shard=crash)
    assert (tmp_path / "cut" / "run.json").exists() and not (tmp_path / "cut" / "manifest.json").exists()
    with pytest.raises(ValueError, match="no manifest.json|cannot read manifest"):
        Gallery.load(tmp_path / "cut")  # never a half-written index
    changed = read_source(folder)
    changed.refs, changed.labels = changed.refs[:-1], changed.labels[:-1]
    with pytest.raises(ValueError, match="SOURCE changed between runs"):
        index_source(changed, model, tmp_path / "cut", shard_size=8, progress=False)
    out, note = index_source(src, model, tmp_path / "cut", shard_size=8, progress=False)
    assert note["resumed_shards"] == 2
    assert np.array_equal(features(out), features(full))
    assert [it["path"] for it in Gallery.load(out).items] == [it["path"] for it in Gallery.load(full).items]


def test_incremental_add_keeps_ids(model, folder, tmp_path):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(folder, root)
    g1 = build_index(root, model, shard_size=8, progress=False)
    before = [it["path"] for it in g1.items]
    Image.fromarray(digit(3, 0, 2)).save(root / "3" / "zz.png")
    Image.fromarray(digit(0, 0, 2)).save(root / "0" / "a0.png")  # sorts before existing files: still appended
    (root / "9" / "s0.png").unlink()
    out, note = index_source(read_source(root), model, root / ".crema-index", progress=False)
    g2 = Gallery.load(out, model)
    assert note == {"added": 2, "resumed_shards": 0, "missing_from_source": 1}
    assert [it["path"] for it in g2.items] == [*before, "0/a0.png", "3/zz.png"]
    assert np.array_equal(g2.features[:30], g1.features) and g2.manifest["generation"] == 2
    assert sorted(p.name for p in out.glob("vectors-*")) == ["vectors-000002.faiss"]
    assert g2.search(g2.features[31], k=1)[0]["id"] == 31


@pytest.mark.parametrize("where", ["shards/000001.npy", "thumbs/000001/"])
def test_disk_full_and_refusals(model, lenet_files, folder, tmp_path, monkeypatch, where):
    real = indexing.write_atomic

    def full(path, data, **kw):
        if where in Path(path).as_posix():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(indexing, "write_atomic", full)
    with pytest.raises(RuntimeError, match="disk full writing .*1.*run the same command again"):
        index_source(read_source(folder), model, tmp_path / "i", shard_size=8, progress=False)
    assert not (tmp_path / "i" / "manifest.json").exists()
    monkeypatch.setattr(indexing, "write_atomic", real)
    out, note = index_source(read_source(folder), model, tmp_path / "i", shard_size=8, progress=False)
    assert note["resumed_shards"] == 1 and len(Gallery.load(out)) == 30
    other = type(model).load(lenet_files["prototxt"], lenet_files["weights"], feature_blob="pool2")
    with pytest.raises(ValueError, match="another model or weights.*--restart"):
        index_source(read_source(folder), other, out, progress=False)
    with pytest.raises(ValueError, match="another model"):
        Gallery.load(out, other)
    v1 = tmp_path / "v1"
    v1.mkdir()
    (v1 / "manifest.json").write_text(json.dumps({"format": "crema-gallery", "version": 1, "items": []}))
    with pytest.raises(ValueError, match="old format.*rebuild it with `crema index SOURCE --out .* --restart`"):
        Gallery.load(v1)


# -- Ray ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _embed_actor_pids() -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid.isdigit() and b"_RayEmbed" in cmd:
            pids.append(int(pid))
    return pids


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Ray Data's own DataContext warnings
def test_ray_engine_equals_local_even_with_a_killed_worker(model, folder, tmp_path, ray_local):
    """Shards of 3 images (11 shards) on Ray with 2 Net actors, one of which is SIGKILLed after the first shard comes
    back: the run finishes (Ray restarts the actor and resends its shard) or stops with the resume message and a
    rerun completes; either way the index equals the local engine's bit for bit (same rows, same ids, no duplicate
    or missing item)."""
    src = read_source(folder)
    local, _ = index_source(src, model, tmp_path / "local", shard_size=3, batch=2, progress=False)
    killed = []

    def kill_one(no, n):
        if not killed:
            pids = _embed_actor_pids()
            written = len(list((tmp_path / "ray" / "shards").glob("*.json")))
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append((pids[0], written))

    opts = {"engine": "ray", "workers": 2, "shard_size": 3, "batch": 2, "progress": False}
    try:
        index_source(src, model, tmp_path / "ray", on_shard=kill_one, **opts)
    except RuntimeError as exc:  # the run may stop; the message says how to resume
        assert "run the same command again" in str(exc), exc
        index_source(src, model, tmp_path / "ray", **opts)
    assert killed and killed[0][1] < 11, "the worker was killed before the run ended"
    g, ref = Gallery.load(tmp_path / "ray", model), Gallery.load(local, model)
    assert [it["path"] for it in g.items] == [it["path"] for it in ref.items]
    assert np.array_equal(features(tmp_path / "ray"), features(local))


def test_out_must_be_an_index_folder(model, folder, tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not an index folder"):
        index_source(read_source(folder), model, tmp_path / "docs", restart=True, progress=False)
    assert (tmp_path / "docs" / "thesis.tex").read_text() == "precious"


def test_ray_missing_says_how_to_get_it(model, folder, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(RuntimeError, match=r"pip install 'crema\[scale\]'"):
        index_source(read_source(folder), model, tmp_path / "i", engine="ray", progress=False)


def test_finish_builds_a_tuned_approximate_index_and_extends_it(tmp_path, monkeypatch):
    """Shards of 3,000 clustered 64-d features, the exact limit set to 0: finish() trains IVF + PQ + refine, tunes it
    on 500 held-out indexed vectors and writes the measured recall@10 (>= 0.95) into the manifest; a later shard is
    added to the same trained index (incremental), and every vector finds itself."""
    from functools import partial

    from server.vector_index import plan_index
    from tests.server.test_vector_index import clustered

    monkeypatch.setattr(indexing, "plan_index", partial(plan_index, flat_max_bytes=0))
    x = clustered(3_300, 64, 11)
    block = {"fingerprint": "f" * 40, "name": "synthetic", "feature_blob": "fc", "dim": 64, "preset": "none"}
    rows = lambda s, n: [
        {"i": s + k, "path": f"{s + k}.png", "label": None, "thumb": None, "error": None} for k in range(n)
    ]
    shards = []
    for no, s in enumerate(range(0, 3_000, 1_000)):
        indexing.write_shard(tmp_path, no, rows(s, 1_000), x[s : s + 1_000])
        shards.append({"no": no, "rows": 1_000, "ok": 1_000})
    base = {"name": "t", "source": {"kind": "list", "root": None, "spec": "t"}, "thumbs": "files"}
    m1 = indexing.finish(tmp_path, block, shards, 1_000, base, None)
    v = m1["vectors"]
    assert v["factory"].startswith("IVF") and v["recall_queries"] == 500 and v["recall_at_10"] >= 0.95
    indexing.write_shard(tmp_path, 3, rows(3_000, 300), x[3_000:])
    m2 = indexing.finish(tmp_path, block, [*shards, {"no": 3, "rows": 300, "ok": 300}], 1_000, base, m1)
    assert m2["vectors"]["factory"] == v["factory"] and m2["count"] == 3_300 and m2["generation"] == 2
    g = Gallery.load(tmp_path)
    ids, _ = g.search_batch(x[::97], 1)
    assert np.mean(ids[:, 0] == np.arange(0, 3_300, 97)) >= 0.95 and g.items[3_299]["path"] == "3299.png"
