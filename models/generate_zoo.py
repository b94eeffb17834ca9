"""Write the deploy prototxts of the published ImageNet classifiers under models/ from their architectures.

    python models/generate_zoo.py            # (re)writes models/<name>/deploy.prototxt for every net below
    python models/generate_zoo.py --check    # exit 1 when a committed file differs from what this script writes

Each function below states one published architecture as code (layer names, blob names and parameters as the
authors' own Caffe files have them, so their .caffemodel weights load by layer name):

googlenet       BVLC GoogLeNet (BVLC/caffe models/bvlc_googlenet): Inception v1, LRN, 3x3/s2 ceil-mode max pools,
                Dropout 0.4, 224x224.
squeezenet1.0   SqueezeNet v1.0 (forresti/SqueezeNet): conv1 96x7x7/s2, fire modules (squeeze 1x1, expand 1x1 + 3x3,
                Concat), pools after conv1/fire4/fire8, conv10 with pad 1 (as published), global average pool, 227x227.
squeezenet1.1   SqueezeNet v1.1: conv1 64x3x3/s2, pools after conv1/fire3/fire5, 227x227.
vgg16           VGG ILSVRC-2014 16-layer model, configuration D (Simonyan & Zisserman, the ksimonyan gist 211839e7):
                13 3x3 convolutions, 5 2x2 max pools, fc6/fc7 4096 with Dropout 0.5, 224x224.
resnet50        ResNet-50 (KaimingHe/deep-residual-networks): bottleneck blocks 3-4-6-3, BatchNorm (global stats) +
                Scale after every convolution, stride 2 on the first 1x1 of res3a/res4a/res5a, 7x7 average pool.
mobilenet_v1    MobileNet v1 1.0-224, shicai/MobileNet-Caffe: depthwise (grouped) 3x3 + pointwise 1x1, BatchNorm eps 1e-5
                + Scale + ReLU in place, global average pool, fc7 as a 1x1 convolution.
mobilenet_v2    MobileNet v2 1.0-224, shicai/MobileNet-Caffe: inverted residuals (expand 1x1, depthwise 3x3, linear 1x1),
                BatchNorm into a new `X/bn` blob, ReLU (not ReLU6, as in that port), Eltwise SUM shortcuts, the
                port's stride placement (conv4_7, not conv4_3, halves the 28x28 planes).

The weights are not here: `crema download NAME` fetches them where the authors publish them (server/download.py).
Inputs use an `Input` layer with batch 1 (the published files use the older `input_dim` lines; both load).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


class Proto:
    """A deploy prototxt being written: `layer(...)` appends one layer block in Caffe's text format."""

    def __init__(self, name: str, input_shape: tuple[int, int, int, int]) -> None:
        self.lines = [f'name: "{name}"']
        self.layer("data", "Input", [], ["data"], input_param={"shape": {"dim": list(input_shape)}})

    def layer(self, name: str, type_: str, bottom: list[str], top: list[str], **params: dict) -> str:
        out = ["layer {", f'  name: "{name}"', f'  type: "{type_}"']
        out += [f'  bottom: "{b}"' for b in bottom]
        out += [f'  top: "{t}"' for t in top]
        for key, value in params.items():
            out += _message(key, value, 1)
        out.append("}")
        self.lines += out
        return top[0]

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"

    # -- the layer kinds these nets use -------------------------------------------------------------------
    def conv(
        self,
        name: str,
        bottom: str,
        num: int,
        k: int,
        *,
        stride: int = 1,
        pad: int = 0,
        group: int = 1,
        bias: bool = True,
        top: str | None = None,
    ) -> str:
        p: dict = {"num_output": num}
        if not bias:
            p["bias_term"] = False
        if pad:
            p["pad"] = pad
        p["kernel_size"] = k
        if stride != 1:
            p["stride"] = stride
        if group != 1:
            p["group"] = group
        return self.layer(name, "Convolution", [bottom], [top or name], convolution_param=p)

    def relu(self, name: str, blob: str) -> str:
        return self.layer(name, "ReLU", [blob], [blob])

    def pool(self, name: str, bottom: str, method: str, k: int = 0, stride: int = 1, pad: int = 0) -> str:
        p: dict = {"pool": _Enum(method)}
        if k == 0:
            p["global_pooling"] = True
        else:
            p["kernel_size"] = k
            if stride != 1:
                p["stride"] = stride
            if pad:
                p["pad"] = pad
        return self.layer(name, "Pooling", [bottom], [name], pooling_param=p)

    def lrn(self, name: str, bottom: str) -> str:
        return self.layer(name, "LRN", [bottom], [name], lrn_param={"local_size": 5, "alpha": 0.0001, "beta": 0.75})

    def bn_scale(self, bn: str, scale: str, bottom: str, top: str, eps: float | None = None) -> str:
        p: dict = {"use_global_stats": True}
        if eps is not None:
            p["eps"] = eps
        self.layer(bn, "BatchNorm", [bottom], [top], batch_norm_param=p)
        return self.layer(scale, "Scale", [top], [top], scale_param={"bias_term": True})

    def fc(self, name: str, bottom: str, num: int) -> str:
        return self.layer(name, "InnerProduct", [bottom], [name], inner_product_param={"num_output": num})

    def dropout(self, name: str, blob: str, ratio: float) -> str:
        return self.layer(name, "Dropout", [blob], [blob], dropout_param={"dropout_ratio": ratio})

    def concat(self, name: str, bottoms: list[str]) -> str:
        return self.layer(name, "Concat", bottoms, [name])

    def softmax(self, bottom: str) -> str:
        return self.layer("prob", "Softmax", [bottom], ["prob"])


class _Enum(str):
    """An enum value, written without quotes (pool: MAX)."""


def _scalar(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, _Enum):
        return str(v)
    if isinstance(v, str):
        return f'"{v}"'
    return repr(v)


def _message(key: str, value: object, depth: int) -> list[str]:
    pad = "  " * depth
    if isinstance(value, dict):
        return [f"{pad}{key} {{", *[ln for k, v in value.items() for ln in _message(k, v, depth + 1)], f"{pad}}}"]
    if isinstance(value, list):
        return [f"{pad}{key}: {_scalar(v)}" for v in value]
    return [f"{pad}{key}: {_scalar(value)}"]


# -- GoogLeNet ------------------------------------------------------------------------------------------------
# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) per inception module: Szegedy et al. 2014, table 1.
# fmt: off
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}
# fmt: on


def googlenet() -> str:
    p = Proto("GoogleNet", (1, 3, 224, 224))
    x = p.relu("conv1/relu_7x7", p.conv("conv1/7x7_s2", "data", 64, 7, stride=2, pad=3))
    x = p.lrn("pool1/norm1", p.pool("pool1/3x3_s2", x, "MAX", 3, 2))
    x = p.relu("conv2/relu_3x3_reduce", p.conv("conv2/3x3_reduce", x, 64, 1))
    x = p.relu("conv2/relu_3x3", p.conv("conv2/3x3", x, 192, 3, pad=1))
    x = p.pool("pool2/3x3_s2", p.lrn("conv2/norm2", x), "MAX", 3, 2)
    for name, (c1, r3, c3, r5, c5, pp) in INCEPTION.items():
        m = f"inception_{name}"
        b1 = p.relu(f"{m}/relu_1x1", p.conv(f"{m}/1x1", x, c1, 1))
        b3 = p.relu(f"{m}/relu_3x3_reduce", p.conv(f"{m}/3x3_reduce", x, r3, 1))
        b3 = p.relu(f"{m}/relu_3x3", p.conv(f"{m}/3x3", b3, c3, 3, pad=1))
        b5 = p.relu(f"{m}/relu_5x5_reduce", p.conv(f"{m}/5x5_reduce", x, r5, 1))
        b5 = p.relu(f"{m}/relu_5x5", p.conv(f"{m}/5x5", b5, c5, 5, pad=2))
        bp = p.pool(f"{m}/pool", x, "MAX", 3, 1, 1)
        bp = p.relu(f"{m}/relu_pool_proj", p.conv(f"{m}/pool_proj", bp, pp, 1))
        x = p.concat(f"{m}/output", [b1, b3, b5, bp])
        if name in ("3b", "4e"):
            x = p.pool(f"pool{name[0]}/3x3_s2", x, "MAX", 3, 2)
    x = p.dropout("pool5/drop_7x7_s1", p.pool("pool5/7x7_s1", x, "AVE", 7, 1), 0.4)
    p.softmax(p.fc("loss3/classifier", x, 1000))
    return p.text()


# -- SqueezeNet -------------------------------------------------------------------------------------------------
# (squeeze, expand) per fire module 2..9: Iandola et al. 2016, table 1 (the same in v1.0 and v1.1).
FIRE = {2: (16, 64), 3: (16, 64), 4: (32, 128), 5: (32, 128), 6: (48, 192), 7: (48, 192), 8: (64, 256), 9: (64, 256)}


def _fire(p: Proto, i: int, x: str) -> str:
    s, e = FIRE[i]
    f = f"fire{i}"
    x = p.relu(f"{f}/relu_squeeze1x1", p.conv(f"{f}/squeeze1x1", x, s, 1))
    a = p.relu(f"{f}/relu_expand1x1", p.conv(f"{f}/expand1x1", x, e, 1))
    b = p.relu(f"{f}/relu_expand3x3", p.conv(f"{f}/expand3x3", x, e, 3, pad=1))
    return p.concat(f"{f}/concat", [a, b])


def squeezenet(version: str) -> str:
    p = Proto(f"SqueezeNet_v{version}", (1, 3, 227, 227))
    if version == "1.0":
        conv1, pools, conv10_pad = (96, 7), (4, 8), 1  # v1.0's conv10 has pad 1 (15x15 before the global pool)
    else:
        conv1, pools, conv10_pad = (64, 3), (3, 5), 0
    x = p.relu("relu_conv1", p.conv("conv1", "data", conv1[0], conv1[1], stride=2))
    x = p.pool("pool1", x, "MAX", 3, 2)
    for i in range(2, 10):
        x = _fire(p, i, x)
        if i in pools:
            x = p.pool(f"pool{i}", x, "MAX", 3, 2)
    x = p.dropout("drop9", x, 0.5)
    x = p.relu("relu_conv10", p.conv("conv10", x, 1000, 1, pad=conv10_pad))
    p.softmax(p.pool("pool10", x, "AVE"))
    return p.text()


# -- VGG-16 -----------------------------------------------------------------------------------------------------
VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))  # configuration D


def vgg16() -> str:
    p = Proto("VGG_ILSVRC_16_layers", (1, 3, 224, 224))
    x = "data"
    for s, widths in enumerate(VGG16, start=1):
        for j, w in enumerate(widths, start=1):
            x = p.relu(f"relu{s}_{j}", p.conv(f"conv{s}_{j}", x, w, 3, pad=1))
        x = p.pool(f"pool{s}", x, "MAX", 2, 2)
    for i in (6, 7):
        x = p.dropout(f"drop{i}", p.relu(f"relu{i}", p.fc(f"fc{i}", x, 4096)), 0.5)
    p.softmax(p.fc("fc8", x, 1000))
    return p.text()


# -- ResNet-50 --------------------------------------------------------------------------------------------------
RESNET50 = ((2, 3, 64), (3, 4, 128), (4, 6, 256), (5, 3, 512))  # (stage, blocks, bottleneck width); out = 4x width


def _res_conv(
    p: Proto, stage: int, block: str, branch: str, x: str, num: int, k: int, stride: int = 1, relu: bool = True
) -> str:
    name = f"res{stage}{block}_branch{branch}"
    y = p.conv(name, x, num, k, stride=stride, pad=k // 2, bias=False)
    p.bn_scale(f"bn{stage}{block}_branch{branch}", f"scale{stage}{block}_branch{branch}", y, y)
    return p.relu(f"{name}_relu", y) if relu else y


def resnet50() -> str:
    p = Proto("ResNet-50", (1, 3, 224, 224))
    x = p.conv("conv1", "data", 64, 7, stride=2, pad=3)
    p.bn_scale("bn_conv1", "scale_conv1", x, x)
    x = p.pool("pool1", p.relu("conv1_relu", x), "MAX", 3, 2)
    for stage, blocks, width in RESNET50:
        for b in range(blocks):
            block = "abcdef"[b]
            stride = 2 if b == 0 and stage > 2 else 1
            if b == 0:
                shortcut = _res_conv(p, stage, block, "1", x, 4 * width, 1, stride, relu=False)
            else:
                shortcut = x
            y = _res_conv(p, stage, block, "2a", x, width, 1, stride)
            y = _res_conv(p, stage, block, "2b", y, width, 3)
            y = _res_conv(p, stage, block, "2c", y, 4 * width, 1, relu=False)
            name = f"res{stage}{block}"
            x = p.relu(f"{name}_relu", p.layer(name, "Eltwise", [shortcut, y], [name]))
    p.softmax(p.fc("fc1000", p.pool("pool5", x, "AVE", 7, 1), 1000))
    return p.text()


# -- MobileNet v1 (shicai) --------------------------------------------------------------------------------------
# (block name, output channels of the pointwise conv, stride of the depthwise conv): Howard et al. 2017, table 1.
# fmt: off
MOBILENET_V1 = (
    ("2_1", 64, 1), ("2_2", 128, 2), ("3_1", 128, 1), ("3_2", 256, 2), ("4_1", 256, 1), ("4_2", 512, 2),
    ("5_1", 512, 1), ("5_2", 512, 1), ("5_3", 512, 1), ("5_4", 512, 1), ("5_5", 512, 1), ("5_6", 1024, 2),
    ("6", 1024, 1),
)
# fmt: on


def mobilenet_v1() -> str:
    p = Proto("MOBILENET", (1, 3, 224, 224))
    x = p.conv("conv1", "data", 32, 3, stride=2, pad=1, bias=False)
    p.bn_scale("conv1/bn", "conv1/scale", x, x, eps=1e-5)
    x, c = p.relu("relu1", x), 32
    for block, out, stride in MOBILENET_V1:
        for part, num, k, group, s in (("dw", c, 3, c, stride), ("sep", out, 1, 1, 1)):
            name = f"conv{block}/{part}"
            x = p.conv(name, x, num, k, stride=s, pad=k // 2, group=group, bias=False)
            p.bn_scale(f"{name}/bn", f"{name}/scale", x, x, eps=1e-5)
            x = p.relu(f"relu{block}/{part}", x)
        c = out
    x = p.pool("pool6", x, "AVE")
    p.softmax(p.conv("fc7", x, 1000, 1))
    return p.text()


# -- MobileNet v2 (shicai) --------------------------------------------------------------------------------------
# (expansion t, output channels c, repeats n, first stride s): Sandler et al. 2018, table 2, except that shicai's port
# (whose weights these are) puts the stride 2 of the 64-channel row on the first 96-channel block instead
# (conv4_3 stride 1, conv4_7 stride 2; same output size, the 64-channel blocks at 28x28). Block names are
# conv<stage>_<i>, counting on across the table's rows as V2_NAMES lists them.
# fmt: off
MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 1), (6, 96, 3, 2), (6, 160, 3, 2),
                (6, 320, 1, 1))
V2_NAMES = ("2_1", "2_2", "3_1", "3_2", "4_1", "4_2", "4_3", "4_4", "4_5", "4_6", "4_7", "5_1", "5_2", "5_3",
            "6_1", "6_2", "6_3")
# fmt: on


def _bn_relu(p: Proto, conv: str, relu: str | None) -> str:
    y = p.bn_scale(f"{conv}/bn", f"{conv}/scale", conv, f"{conv}/bn", eps=1e-5)
    return p.relu(relu, y) if relu else y


def mobilenet_v2() -> str:
    p = Proto("MOBILENET_V2", (1, 3, 224, 224))
    x = _bn_relu(p, p.conv("conv1", "data", 32, 3, stride=2, pad=1, bias=False), "relu1")
    c, names = 32, iter(V2_NAMES)
    for t, out, n, s in MOBILENET_V2:
        for i in range(n):
            block, stride = next(names), s if i == 0 else 1
            y = _bn_relu(p, p.conv(f"conv{block}/expand", x, c * t, 1, bias=False), f"relu{block}/expand")
            y = p.conv(f"conv{block}/dwise", y, c * t, 3, stride=stride, pad=1, group=c * t, bias=False)
            y = _bn_relu(p, y, f"relu{block}/dwise")
            y = _bn_relu(p, p.conv(f"conv{block}/linear", y, out, 1, bias=False), None)
            if stride == 1 and c == out:
                y = p.layer(f"block_{block}", "Eltwise", [x, y], [f"block_{block}"])
            x, c = y, out
    x = _bn_relu(p, p.conv("conv6_4", x, 1280, 1, bias=False), "relu6_4")
    x = p.pool("pool6", x, "AVE")
    p.softmax(p.conv("fc7", x, 1000, 1))
    return p.text()


NETS: dict[str, Callable[[], str]] = {
    "googlenet": googlenet,
    "squeezenet1.0": lambda: squeezenet("1.0"),
    "squeezenet1.1": lambda: squeezenet("1.1"),
    "vgg16": vgg16,
    "resnet50": resnet50,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="compare with the committed files, write nothing")
    args = ap.parse_args(argv)
    stale = []
    for name, make in NETS.items():
        path = HERE / name / "deploy.prototxt"
        text = make()
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    for path in stale:
        print(f"{path} differs from what models/generate_zoo.py writes", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
