"""The embedded demo checkpoint: a tiny DeepSeek-V3 with its MTP layer (rebuild with scripts/make_demo.py)."""

import pathlib

DEMO_DIR = pathlib.Path(__file__).parent
