#!/usr/bin/env python
"""Write a RANDOM-weight tiny FP8 DeepSeek-V3 + MTP checkpoint in the demo's format (for tests and benchmarks).

Usage: python scripts/make_demo.py OUT_DIR

The package's own demo (mtpmanifest/demo/) holds TRAINED weights written by scripts/train_demo.py; this script
refuses to overwrite it. Its output is byte-reproducible, and its config.json / tokenizer.json /
tokenizer_config.json are byte-identical to the shipped demo's (tests/fixtures/test_deepseek_v3.py checks both).
"""

from __future__ import annotations

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, write_checkpoint  # noqa: E402

DEMO_FILES = ("README.md", "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
# The files the random build shares byte for byte with the trained demo.
SHARED_WITH_TRAINED = ("config.json", "tokenizer.json", "tokenizer_config.json")

README = """\
# Random-weight demo-format checkpoint

A tiny DeepSeek-V3 checkpoint in the official release's format, written by `scripts/make_demo.py` with
`mtpmanifest.fixtures.deepseek_v3.write_checkpoint(out, TINY_CONFIG, fp8=True, seed=0)`:

- `config.json`: `DeepseekV3ForCausalLM`, hidden 256, 4 trunk layers (layer 0 dense, 1-3 MoE with 8 routed +
  1 shared expert, top-2 of 2 groups), MLA (q_lora_rank 64, kv_lora_rank 32), vocab 2048, and one MTP / NextN
  layer (`num_nextn_predict_layers: 1`) stored as `model.layers.4.*`.
- `model.safetensors`: every decoder-layer projection as F8_E4M3 with a 128x128-block `weight_scale_inv` (F32),
  embeddings / norms / router / `eh_proj` / `shared_head.*` as BF16, `e_score_correction_bias` as F32.
- `tokenizer.json` / `tokenizer_config.json`: a byte-level BPE with 2048 tokens trained on Python stdlib sources,
  with DeepSeek-V3's pre-tokenizer splits and its BOS/EOS tokens (ids 0 and 1).

The weights are **random** (seed 0): the model generates noise and its MTP head agrees with nothing. The
package's embedded demo (`mtpmanifest/demo/`) has the same config and tokenizer with trained weights
(`scripts/train_demo.py`). Rebuilding with `python scripts/make_demo.py OUT_DIR` is byte-identical.
"""


def build_demo(out_dir: pathlib.Path, weights: dict | None = None) -> pathlib.Path:
    out = write_checkpoint(out_dir, TINY_CONFIG, fp8=True, seed=0, weights=weights)
    (out / "README.md").write_text(README, encoding="utf-8", newline="\n")
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    from mtpmanifest.demo import DEMO_DIR

    out = pathlib.Path(argv[0])
    if out.resolve() == DEMO_DIR.resolve():
        print(f"make_demo.py: {out} holds the trained demo; rebuild it with scripts/train_demo.py", file=sys.stderr)
        return 2
    build_demo(out)
    for name in DEMO_FILES:
        print(f"{(out / name).stat().st_size:>10}  {out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
