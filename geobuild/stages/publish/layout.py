"""Publishing: stage a run as Hugging Face Hub dataset repositories and upload them.

``DIR/dataset/`` holds Parquet (configs ``candidates`` and ``georanker``), a card, a manifest and
statistics pictures; ``DIR/images/`` holds WebDataset tars of the photos the dataset refers to.
Modules: :mod:`.splits` (train/validation by author), :mod:`.tables` (rows to publish),
:mod:`.images` (photo tars), :mod:`.card` (README.md), :mod:`.plots` (PNG statistics),
:mod:`.manifest` (sha256 + size), :mod:`.validate` (load everything back), :mod:`.hub` (upload).
"""

DATASET_REPO = "dataset"
IMAGES_REPO = "images"
