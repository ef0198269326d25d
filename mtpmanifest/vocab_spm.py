"""A SentencePiece tokenizer.model (with added_tokens.json / tokenizer_config.json) as the GGUF "llama"
vocabulary: the tokens, scores and types llama.cpp's converter writes for it (its sentencepiece path).

Ids without a piece up to config.json's vocab_size are "[PAD<id>]", score -10000, UNUSED. added_tokens.json
entries become USER_DEFINED (score -1000); tokenizer_config.json's added_tokens_decoder entries become CONTROL
when marked special or when they look special (<|...|>, <｜...｜>, <pad>, <mask>, <unused...>), else
USER_DEFINED with SentencePiece's "▁" read as a space (score -1000). tokenizer_config.json's add_prefix_space,
when present, is the GGUF's add_space_prefix (what llama.cpp writes for ERNIE-4.5).
gguf-py's SentencePieceVocab is not used: it ignores added_tokens_decoder and in-range added_tokens.json
entries, and refuses added ids llama.cpp's converter accepts, so its vocabulary would differ.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import gguf

from .errors import BadInputError
from .source import load_json_object

log = logging.getLogger(__name__)
PAD_SCORE = -10000.0
ADDED_SCORE = -1000.0
LOOKS_SPECIAL = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")


@dataclass
class SpmVocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    add_space_prefix: bool | None  # None: not stated (llama.cpp's default, true, applies)


def looks_special(text: str) -> bool:
    """Added tokens llama.cpp's converter treats as control tokens even when not marked special."""
    return (text in LOOKS_SPECIAL or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def load_processor(path: Path):
    """sentencepiece's processor for tokenizer.model (BadInputError naming the file when it cannot)."""
    try:
        import sentencepiece
    except ImportError:
        raise BadInputError(f"{path}: reading a SentencePiece tokenizer needs the sentencepiece package") from None
    if not path.is_file():
        raise BadInputError(f"{path}: missing (the GGUF vocabulary comes from it)")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(path.read_bytes())
    except (OSError, RuntimeError) as exc:
        raise BadInputError(f"{path}: not a SentencePiece model: {exc}") from None
    return processor


def _piece_type(sp, i: int) -> int:
    for test, kind in ((sp.IsUnknown, gguf.TokenType.UNKNOWN), (sp.IsControl, gguf.TokenType.CONTROL),
                       (sp.IsUnused, gguf.TokenType.UNUSED), (sp.IsByte, gguf.TokenType.BYTE)):
        if test(i):
            return int(kind)
    return int(gguf.TokenType.NORMAL)


def read_sentencepiece(model_dir: Path, n_vocab: int) -> SpmVocab:
    sp = load_processor(model_dir / "tokenizer.model")
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    scores = [PAD_SCORE] * n_vocab
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    if sp.vocab_size() > n_vocab:
        log.warning("tokenizer.model: pieces %d.. are beyond vocab_size %d of config.json: left out",
                    n_vocab, sp.vocab_size())
    for i in range(min(sp.vocab_size(), n_vocab)):
        tokens[i], scores[i], types[i] = sp.IdToPiece(i), float(sp.GetScore(i)), _piece_type(sp, i)

    def put(token_id, text, kind: int, path: Path) -> None:
        if not isinstance(token_id, int) or not isinstance(text, str) or token_id < 0:
            raise BadInputError(f"{path}: bad added token {text!r} -> {token_id!r}")
        if token_id >= n_vocab:
            log.warning("%s: token %r (id %d) is beyond vocab_size %d: left out", path.name, text, token_id, n_vocab)
            return
        tokens[token_id], scores[token_id], types[token_id] = text, ADDED_SCORE, kind

    added_path = model_dir / "added_tokens.json"
    for text, token_id in (load_json_object(added_path, optional=True) or {}).items():
        put(token_id, text, int(gguf.TokenType.USER_DEFINED), added_path)
    config_path = model_dir / "tokenizer_config.json"
    config = load_json_object(config_path, optional=True) or {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise BadInputError(f"{config_path}: added_tokens_decoder is not an object")
    for key, entry in decoder.items():
        text = entry.get("content") if isinstance(entry, dict) else None
        if not str(key).isdigit() or not isinstance(text, str):
            raise BadInputError(f"{config_path}: bad added_tokens_decoder entry {key!r}")
        if entry.get("special") or looks_special(text):
            put(int(key), text, int(gguf.TokenType.CONTROL), config_path)
        else:
            put(int(key), text.replace("\u2581", " "), int(gguf.TokenType.USER_DEFINED), config_path)
    prefix = config.get("add_prefix_space")
    return SpmVocab(tokens, scores, types, prefix if isinstance(prefix, bool) else None)
