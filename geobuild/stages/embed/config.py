"""Options of the embed stage."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...core.errors import GeobuildError

DTYPES = ("float16", "float32")
DEFAULT_TEMPLATE = "A photo taken in {location}."


def default_num_workers(device: str) -> int:
    """Decode processes: leave one core to the model on a CPU, feed a GPU with up to 8."""
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return max(1, min(8, cores - 1))
    return max(1, min(4, cores - 1))


@dataclass
class EmbedConfig:
    """Options of the embed stage (``model`` and ``dtype`` determine the outputs)."""

    model: str = "efficientnet-lite0"
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    dtype: str = "float16"
    text_template: str = DEFAULT_TEMPLATE
    torch_threads: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise GeobuildError(f"unknown embedding dtype '{self.dtype}' (choose float16 or float32)")
        if int(self.batch_size) < 1:
            raise GeobuildError("--batch-size must be at least 1")
        if "{location}" not in self.text_template:
            raise GeobuildError("text_template must contain '{location}'")
