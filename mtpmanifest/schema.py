"""Dataclass schemas of the config groups. Hydra validates every composed YAML against them
(unknown keys and wrong types fail at composition); the engine receives these plain dataclasses.

No hydra import here: the entry point registers these with Hydra's ConfigStore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

STAGES = ("inventory", "plan", "calibrate", "convert", "verify", "accept", "diff", "lint", "fixture", "all")
ROLES = ("auto", "trunk", "mtp", "shared", "dropped")


@dataclass
class MetadataEntry:
    """One GGUF key. `key` names a gguf-py constant (`LLM.BLOCK_COUNT` = gguf.Keys.LLM.BLOCK_COUNT)."""

    key: str = MISSING
    type: str = MISSING  # uint32 | int32 | float32 | bool | string
    value: Optional[str] = None  # expression over config.json (see expr.py)
    const: Any = None  # a literal instead of `value`
    map: Dict[str, Any] = field(default_factory=dict)  # config value -> GGUF value
    default: Any = None  # used when the config key is absent
    when: Optional[str] = None  # write only when this config key is present
    per_block: bool = False  # an array with one value per GGUF block (trunk + MTP layers kept), `bid` bound


@dataclass
class TensorRule:
    """Claims source tensors by pattern. Placeholders: {bid} any block, {mtp} an MTP block (absolute
    number), {nextn} an MTP layer index counted from 0, {xid} an expert index. Every source tensor
    must be claimed by exactly one rule."""

    source: str = MISSING
    target: Optional[str] = None  # gguf MODEL_TENSOR name, e.g. NEXTN_EH_PROJ
    targets: List[str] = field(default_factory=list)  # for ops with several outputs
    suffix: str = "weight"  # weight | bias | "" (a GGUF name without suffix)
    role: str = "auto"  # auto: trunk below the trunk layer count, mtp from there on
    op: str = "copy"
    params: Dict[str, str] = field(default_factory=dict)  # op parameter -> expression
    shape: List[str] = field(default_factory=list)  # expected source shape (HF order), expressions
    where: Optional[str] = None  # blocks that must have it, expression over `bid` and config
    optional: bool = False  # a block may lack it
    reason: Optional[str] = None  # why a tensor is dropped (role: dropped)
    mtp_layer: Optional[int] = None  # a tensor without block placeholder that belongs to MTP layer k
    # the torch forward's decoder-layer parameter (e.g. self_attn.q_proj.weight, mlp.experts.{xid}.up_proj.weight)
    # when the source name after its block index differs from transformers' name
    module: Optional[str] = None


@dataclass
class LayerCounts:
    trunk: str = MISSING  # expression: number of trunk decoder layers
    mtp: str = MISSING  # expression: MTP layers the config declares; may use mtp_layers_found (counted in the tensors)


@dataclass
class VocabConfig:
    model: str = "gpt2"  # tokenizer.ggml.model: gpt2 (BPE tokenizer.json) or llama (SentencePiece tokenizer.model)
    pre: str = MISSING  # tokenizer.ggml.pre (llama.cpp pre-tokenizer name)


@dataclass
class MtpHeadTensors:
    """The head's GGUF tensors, as gguf MODEL_TENSOR names formatted with the MTP block; in each list
    the first one the file (or source) has wins: llama.cpp falls back to the trunk's embedding, output
    norm and output head when the MTP layer ships no copies of its own."""

    embedding: List[str] = field(default_factory=lambda: ["NEXTN_EMBED_TOKENS", "TOKEN_EMBD"])
    embedding_norm: List[str] = field(default_factory=lambda: ["NEXTN_ENORM"])
    hidden_norm: List[str] = field(default_factory=lambda: ["NEXTN_HNORM"])
    projection: List[str] = field(default_factory=lambda: ["NEXTN_EH_PROJ"])
    final_norm: List[str] = field(default_factory=lambda: ["NEXTN_SHARED_HEAD_NORM", "OUTPUT_NORM"])
    head: List[str] = field(default_factory=lambda: ["NEXTN_SHARED_HEAD_HEAD", "OUTPUT"])


@dataclass
class MtpHeadConfig:
    """How an MTP layer runs (mtpmanifest.forward): x = projection(cat(concat order of
    embedding_norm(E[t_{i+shift}]), hidden_norm(h_i))) -> the block's decoder layer at position i ->
    final_norm -> head, which predicts t_{i+shift+1}."""

    concat: List[str] = field(default_factory=lambda: ["embedding", "hidden"])  # MiMo: [hidden, embedding]
    hidden: str = "post_norm"  # trunk hidden fed to the first MTP layer: post_norm (after output_norm) | pre_norm
    token_shift: int = 1  # MTP layer k (0-based) at row i embeds token t_{i + token_shift + k}
    chain: str = "block_output"  # layer k>0 takes layer k-1's decoder output (block_output) or its final_norm output
    norm_offset: float = 0.0  # the head's RMSNorms scale by (norm_offset + w): 1.0 for zero-centred norms
    forward: Optional[str] = None  # torch forward family (hf_modules.families()); None: config.json's model_type
    tensors: MtpHeadTensors = field(default_factory=MtpHeadTensors)


@dataclass
class FixtureConfig:
    """A tiny checkpoint built from the architecture file alone (stage=fixture, fixtures/from_rules.py)."""

    config: Dict[str, Any] = field(default_factory=dict)  # its config.json (vocab_size 2048: the shipped tokenizer)
    files: Dict[str, str] = field(default_factory=dict)  # source-name prefix -> file (side files); others: model.safetensors


@dataclass
class RejectRule:
    """A config.json feature the architecture file does not convert: the run stops instead of writing a
    file that silently differs from the model (RoPE scaling the GGUF keys cannot express, …)."""

    when: str = MISSING  # condition over config.json (a missing key is false)
    reason: str = MISSING


@dataclass
class ArchConfig:
    name: str = MISSING
    gguf_arch: str = MISSING  # gguf MODEL_ARCH name, e.g. DEEPSEEK2
    hf_architectures: List[str] = field(default_factory=list)
    model_types: List[str] = field(default_factory=list)
    layers: LayerCounts = field(default_factory=LayerCounts)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    fp8_scale_suffix: str = "_scale_inv"
    derived: Dict[str, str] = field(default_factory=dict)
    metadata: List[MetadataEntry] = field(default_factory=list)
    tensors: List[TensorRule] = field(default_factory=list)
    mtp_head: Optional[MtpHeadConfig] = None  # None: the family's MTP head cannot be run (no acceptance)
    reject: List[RejectRule] = field(default_factory=list)
    llamacpp_mtp: bool = True  # llama.cpp's runtime can run this family's MTP head (README "Supported families")
    fixture: Optional[FixtureConfig] = None


@dataclass
class TypeRule:
    """One line of a preset's type mix: first match wins (see tensor_types.py)."""

    type: str = MISSING  # GGMLQuantizationType name
    category: Optional[str] = None  # llama.cpp's category: output, token_embd, attn_v_like, attn_k, ffn_down …
    name: Optional[str] = None  # regex searched in the GGUF tensor name
    where: Optional[str] = None  # condition over ne0, i_layer, n_layer, more_bits, n_expert, n_gqa …


@dataclass
class QuantConfig:
    name: str = MISSING
    file_type: str = MISSING  # gguf LlamaFileType name, e.g. MOSTLY_Q4_K_M
    default_type: str = MISSING  # GGMLQuantizationType of weights no rule names
    rules: List[TypeRule] = field(default_factory=list)
    mtp: str = "protect"  # protect | inherit (llama.cpp's types, unchanged)
    mtp_floor: Optional[str] = "Q6_K"  # protect: nextn.eh_proj never below this
    mtp_pins: List[str] = field(default_factory=list)  # "REGEX=TYPE" (llama-quantize --tensor-type style), MTP tensors
    requires_imatrix: bool = False  # refuse to run unless an imatrix covers every tensor that wants one


@dataclass
class CalibConfig:
    """Importance matrices (conf/calib/*.yaml)."""

    enabled: bool = False  # stage=all runs calibrate before convert
    imatrix: Optional[str] = None  # quantize with this imatrix file instead of computing one
    merge_with: Optional[str] = None  # add computed entries (MTP and any other missing) to this llama-imatrix file
    data: Optional[str] = None  # text file or directory; None: the corpus shipped with the package
    samples: int = 16
    seq_len: int = 256
    seed: int = 0


@dataclass
class ModelConfig:
    path: Optional[str] = None  # None: the embedded demo checkpoint


@dataclass
class OutputConfig:
    dir: str = "out"
    overwrite: bool = False


@dataclass
class VerifyConfig:
    numeric: bool = True  # dequantize every tensor and compare with its source


@dataclass
class AcceptConfig:
    """MTP draft acceptance on held-out text (mtpmanifest.accept), part of verify."""

    enabled: bool = True
    text: Optional[str] = None  # a UTF-8 text file; None: the package's demo/heldout.txt when present
    max_tokens: int = 4096  # tokens of the text measured
    window: int = 256  # each run as a sequence of at most this many tokens (within a small model's context)
    min_retention: float = 0.95  # output acceptance / source acceptance, per MTP layer; below it verify fails
    min_source_acceptance: float = 0.05  # a source head below this agrees with nothing: retention not judged
    llamacpp: Optional[bool] = None  # also run the GGUF's MTP head in llama.cpp; None: when llama-cpp-python is installed
    llamacpp_tokens: int = 1024  # llama.cpp runs a child process per window: it measures the first this many tokens


@dataclass
class AppConfig:
    arch: ArchConfig = MISSING
    quant: QuantConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    calib: CalibConfig = field(default_factory=CalibConfig)
    accept: AcceptConfig = field(default_factory=AcceptConfig)
    mtp: str = "keep"  # keep | drop (a GGUF without its MTP layers: loud, verify fails) | absent_ok (accept a stripped checkpoint)
    stage: str = "all"
    other: Optional[str] = None  # stage=diff: the file or checkpoint to compare with; stage=lint: a user conf dir
    debug: bool = False
