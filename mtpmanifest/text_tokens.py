"""Text -> token ids in the checkpoint's own tokenizer, for calibration and acceptance: a Hugging Face
tokenizer.json (tokenizers) when there is one, else a SentencePiece tokenizer.model (as the ERNIE-4.5
releases ship), with BOS/EOS added as its tokenizer_config.json says (LlamaTokenizer's defaults: BOS yes,
EOS no)."""
from __future__ import annotations

from pathlib import Path

from .errors import BadInputError
from .source import load_json_object


def encode_text(model_dir: Path, text: str, *, special: bool, purpose: str = "this stage") -> list[int]:
    """Token ids of `text`; special=True adds the tokenizer's own special tokens (e.g. BOS first)."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        except Exception as exc:  # tokenizers raises its own Exception type for malformed files
            raise BadInputError(f"{model_dir / 'tokenizer.json'}: cannot load: {exc}") from None
        return tokenizer.encode(text, add_special_tokens=special).ids
    if (model_dir / "tokenizer.model").is_file():
        from .vocab_spm import load_processor

        sp = load_processor(model_dir / "tokenizer.model")
        config = (load_json_object(model_dir / "tokenizer_config.json", optional=True) or {}) if special else {}
        add_bos = special and config.get("add_bos_token", True) is not False and sp.bos_id() >= 0
        add_eos = special and config.get("add_eos_token", False) is True and sp.eos_id() >= 0
        return sp.encode(text, add_bos=add_bos, add_eos=add_eos)
    raise BadInputError(f"{model_dir}: no tokenizer.json or tokenizer.model; {purpose} needs the model's tokenizer")
