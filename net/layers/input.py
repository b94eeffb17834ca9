"""Input: the net's declared input blobs."""

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
