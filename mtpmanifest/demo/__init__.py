"""The embedded demo checkpoint: a tiny DeepSeek-V3 with its MTP layer (trained by scripts/train_demo.py; scripts/make_demo.py builds a random-weight one)."""

import pathlib

DEMO_DIR = pathlib.Path(__file__).parent
