"""The `crema` command line: classify / time / inspect output, and clean errors (exit 2, one line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from crema import main
from net import Net
from tests.conftest import ROOT, randomize

LENET = str(ROOT / "models/lenet/deploy.prototxt")


@pytest.fixture
def lenet_files(tmp_path):
    net = Net.load(LENET)
    randomize(net, seed=11)
    weights = tmp_path / "lenet.caffemodel"
    net.save(weights)
    images = []
    for i in range(3):
        img = np.zeros((40, 40), np.uint8)
        img[8 + i : 30, 15 : 22 + i] = 255
        path = tmp_path / f"digit{i}.png"
        Image.fromarray(img).save(path)
        images.append(str(path))
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"digit {i}" for i in range(10)) + "\n")
    return net, str(weights), images, str(labels)


def test_classify_json_matches_python_api(lenet_files, capsys):
    net, weights, images, labels = lenet_files
    assert main(["classify", LENET, weights, *images, "--labels", labels, "--top", "3", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["image"] for r in results] == images
    from net.preprocess import PRESETS, load_image

    x = np.stack([PRESETS["lenet-auto"](load_image(p)) for p in images])  # the default, as in the web app
    probs = net.forward(data=x)["prob"]
    for r, p in zip(results, probs):
        assert len(r["predictions"]) == 3
        top = np.argsort(-p, kind="stable")[:3]
        assert [q["index"] for q in r["predictions"]] == list(top)
        assert [q["label"] for q in r["predictions"]] == [f"digit {i}" for i in top]
        np.testing.assert_allclose([q["prob"] for q in r["predictions"]], p[top], rtol=1e-6)


def test_cli_and_web_app_share_the_default_preprocessing(lenet_files):
    """One default on every path: `crema classify` and the web app's model preprocess LeNet's input alike
    (lenet-auto: a dark digit on light paper is inverted), so a drawn 7 gets the same answer in both."""
    from net.classify import preprocess_for
    from server.model import Model

    net, weights, _, _ = lenet_files
    model = Model.load(LENET, weights)
    assert preprocess_for(net, None) == model.pre and model.preset == "lenet-auto"
    drawn = np.full((28, 28), 255, np.uint8)
    drawn[5:8, 6:22] = 0  # the bar of a 7
    drawn[8:24, 17:20] = 0
    np.testing.assert_array_equal(preprocess_for(net, None)(drawn), model.preprocess(drawn))


def test_classify_text_output(lenet_files, capsys):
    _, weights, images, _ = lenet_files
    assert main(["classify", LENET, weights, images[0], "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == images[0] and len(lines) == 3


def test_time_and_inspect(capsys):
    assert main(["time", LENET, "--batch", "4", "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    assert "conv1" in out and "Average Forward pass" in out
    assert main(["inspect", LENET]) == 0
    out = capsys.readouterr().out
    assert "total parameters: 431,080" in out  # 520 + 25,050 + 400,500 + 5,010


def test_time_and_inspect_take_the_default_model_by_name(monkeypatch, lenet_files, capsys):
    """`crema time efficientnet-lite0` finds the converted model as `crema classify` does (net.zoo.resolve; here
    resolve is pointed at LeNet's files, so nothing is converted); Caffe zoo names keep their prototxt."""
    import crema
    from net.zoo import ModelFiles

    _, weights, _, _ = lenet_files
    prototxt, asked = LENET, []

    def resolve(name, **_kw):
        asked.append(name)
        return ModelFiles("efficientnet-lite0", Path(prototxt), Path(weights), None, None)

    monkeypatch.setattr(crema, "resolve", resolve)
    assert main(["time", "efficientnet-lite0", "--batch", "2", "--iterations", "1"]) == 0
    assert "conv1" in capsys.readouterr().out and asked == ["efficientnet-lite0"]
    assert crema._zoo_files("EfficientNet-Lite0", "other.caffemodel") == (prototxt, "other.caffemodel")
    assert crema._zoo_files("caffenet", None)[0].endswith("caffenet/deploy.prototxt") and len(asked) == 2


def test_non_image_is_a_clean_error(lenet_files, tmp_path, capsys):
    _, weights, _, _ = lenet_files
    bogus = tmp_path / "notes.png"
    bogus.write_text("this is not an image")
    assert main(["classify", LENET, weights, str(bogus)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crema: error:") and "notes.png" in err and "Traceback" not in err


def test_errors_exit_2_without_traceback(tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' type: 'ReLU' \n")
    proc = subprocess.run(
        [sys.executable, "-m", "crema", "inspect", str(bad)], capture_output=True, text=True, cwd=ROOT, check=False
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("crema: error:") and "bad.prototxt" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "crema", "inspect", str(tmp_path / "nope.prototxt")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert missing.returncode == 2 and "nope.prototxt" in missing.stderr


def test_threads_on_every_computing_verb(capsys):
    import numba

    import crema

    parser = crema.build_parser()
    for verb in (*crema.COMPUTE_VERBS, "serve"):
        actions = parser._subparsers._group_actions[0].choices[verb]._actions
        assert any("--threads" in a.option_strings for a in actions), verb
    most = numba.config.NUMBA_NUM_THREADS
    assert main(["time", str(LENET), "--threads", str(most + 1), "--iterations", "1"]) == 2
    assert f"--threads must be from 1 to {most}" in capsys.readouterr().err
    assert main(["time", str(LENET), "--threads", "0", "--iterations", "1"]) == 2
    before = numba.get_num_threads()
    try:
        assert main(["time", str(LENET), "--threads", "1", "--iterations", "1", "--json"]) == 0
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(before)
