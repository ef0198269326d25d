"""Bit-exact numpy ports of llama.cpp's (ggml 0.25.3) Q8_0, K-quant (Q2_K..Q6_K) and Q4_0/Q4_1/Q5_0/Q5_1 quantizers, with and
without an importance matrix: ``quantize`` returns exactly the bytes ``ggml_quantize_chunk`` writes."""
from __future__ import annotations

from .api import SUPPORTED, dequantize, quantize

__all__ = ["SUPPORTED", "quantize", "dequantize"]
