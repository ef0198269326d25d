"""mtpmanifest: convert and quantize LLMs to GGUF without losing their MTP heads, and prove it."""

__version__ = "0.1.0"
