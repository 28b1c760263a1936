"""Files shipped inside the package: the bundled model (``BUNDLED_MODEL``), which works offline."""

from __future__ import annotations

import pathlib

# A small divided-attention TimeSformer trained on synthetic motion clips (scripts/train_synthetic_model.py),
# in Hugging Face format: config.json (with id2label), model.safetensors, preprocessor_config.json.
BUNDLED_MODEL = pathlib.Path(__file__).resolve().parent / "synthetic-motion"
