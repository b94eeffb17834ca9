"""Input: the net's declared input blobs; MemoryData, fed the same way."""

from __future__ import annotations

from collections.abc import Callable

from ..blob import Blob
from .base import (
    NO_STEP,
    Layer,
    register,
)


@register("Input")
class InputLayer(Layer):
    gpu_forward = True
    gpu_backward = True
    num_bottom = 0
    num_top = None

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        shapes = self.param.input_param.shape
        if len(shapes) not in (0, 1, len(top)):
            raise self.error(f"input_param has {len(shapes)} shapes for {len(top)} tops (give 1 or one per top)")
        self.shapes = (
            [tuple(int(d) for d in (shapes[0] if len(shapes) == 1 else shapes[i]).dim) for i in range(len(top))]
            if shapes
            else [t.shape for t in top]
        )

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        # Inputs keep whatever shape they were given (Net.forward reshapes them to the fed arrays).
        for t, shape in zip(top, self.shapes):
            if t.data.size == 0 and t.shape != shape:
                t.reshape(shape)

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        pass

    def plan(self, bottom: list[Blob], top: list[Blob]) -> Callable[[], bool] | None:
        return NO_STEP


@register("MemoryData")
class MemoryDataLayer(InputLayer):
    """Caffe's MemoryData as a deploy net's input (pycaffe's set_input_arrays): tops data (batch_size, channels,
    height, width) and, when given, label (batch_size,), fed like Input tops. Caffe applies transform_param only to
    images added one by one (AddMatVector / AddDatumVector), never to fed arrays; crema feeds arrays, so a
    transform_param is refused rather than silently skipped (preprocess the input instead)."""

    gpu_backward = False
    num_top = (1, 2)

    def layer_setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        p = self.param.memory_data_param
        dims = (int(p.batch_size), int(p.channels), int(p.height), int(p.width))
        if min(dims) <= 0:
            raise self.error(f"memory_data_param batch_size, channels, height and width must all be > 0, got {dims}")
        if self.param.has("transform_param"):
            raise self.error(
                "transform_param is not applied to fed arrays (Caffe applies it only to AddMatVector images): "
                "preprocess the input and remove it"
            )
        self.shapes = [dims, (dims[0],)][: len(top)]
