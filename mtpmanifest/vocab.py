"""The GGUF vocabulary (tokenizer.ggml.*): from a Hugging Face BPE tokenizer.json (arch `vocab.model: gpt2`)
or a SentencePiece tokenizer.model (`vocab.model: llama`, e.g. the ERNIE-4.5 releases), as llama.cpp's
converter writes them."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import gguf

from .errors import BadInputError, ConfigError

log = logging.getLogger(__name__)


def read_tokens(model_dir: Path, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and gguf TokenTypes for ids 0..n_vocab-1, from tokenizer.json."""
    path = Path(model_dir) / "tokenizer.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInputError(f"{path}: missing (the GGUF vocabulary comes from it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInputError(f"{path}: cannot parse: {exc}") from None
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise BadInputError(f"{path}: model.type must be BPE with a vocab object")
    by_id: dict[int, tuple[str, int]] = {i: (tok, gguf.TokenType.NORMAL) for tok, i in model["vocab"].items()}
    for added in data.get("added_tokens", []):
        kind = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
    too_large = sorted(i for i in by_id if i >= n_vocab)
    if too_large:
        raise BadInputError(f"{path}: token id {too_large[0]} is beyond vocab_size {n_vocab} of config.json")
    padded = [i for i in range(n_vocab) if i not in by_id]
    if padded:
        log.info("vocabulary: %d ids without a token are padded as [PAD<id>]", len(padded))
    tokens = [by_id[i][0] if i in by_id else f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(by_id[i][1]) if i in by_id else int(gguf.TokenType.UNUSED) for i in range(n_vocab)]
    return tokens, types


def add_vocab(writer: gguf.GGUFWriter, model_dir: Path, model: str, pre: str, n_vocab: int) -> None:
    if model == "llama":
        from .vocab_spm import read_sentencepiece

        spm = read_sentencepiece(Path(model_dir), n_vocab)
        writer.add_tokenizer_model(model)
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(spm.tokens)
        writer.add_token_scores(spm.scores)
        writer.add_token_types(spm.types)
        if spm.add_space_prefix is not None:
            writer.add_add_space_prefix(spm.add_space_prefix)
        gguf.SpecialVocab(model_dir, load_merges=False, n_vocab=n_vocab).add_to_gguf(writer, quiet=True)
        return
    if model != "gpt2":
        raise ConfigError(f"vocab.model={model!r}: only gpt2 (tokenizer.json) and llama (tokenizer.model)")
    tokens, types = read_tokens(model_dir, n_vocab)
    writer.add_tokenizer_model(model)
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=n_vocab)
    if not special.merges:
        raise BadInputError(f"{Path(model_dir) / 'tokenizer.json'}: no BPE merges found")
    special.add_to_gguf(writer, quiet=True)
