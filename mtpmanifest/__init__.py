"""mtpmanifest: convert and quantize LLMs to GGUF without losing their MTP heads, and prove it."""
from pathlib import Path

__version__ = "0.1.0"

# In a source checkout, conf/ and schemas/ sit beside this package (pyproject.toml maps them into
# it when installed). Let them resolve as mtpmanifest.conf / mtpmanifest.schemas there too, so
# `python -m mtpmanifest` works from the checkout's root even over a non-editable install.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "conf" / "config.yaml").is_file():
    __path__.append(str(_checkout))  # noqa: F821  (a package's __path__)
