"""The manifest: what happens to every source tensor, decided before anything is written.

Dataclasses <-> JSON, validated against schemas/manifest.schema.json. Shapes are GGML order (ne0
first), as GGUF stores them and GGUFReader reports them.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from .errors import ConfigError, VerificationError

FORMAT = "mtpmanifest/1"


@dataclass
class TensorEntry:
    name: str  # GGUF tensor name
    shape: list[int]  # GGML order
    type: str  # GGMLQuantizationType name
    type_rule: str  # why this type was chosen
    role: str  # trunk | mtp | shared
    block: int | None
    mtp_layer: int | None  # 0 for the first MTP layer
    op: str
    params: dict[str, int]
    output_index: int  # which output of a multi-output op
    sources: list[str]  # source tensors, in op input order
    scales: list[str]  # FP8 block scales consumed with them
    rule: str  # the source pattern that claimed them
    n_bytes: int
    wants_imatrix: bool = False  # quantized with importance weights when an imatrix covers it
    module: str | None = None  # the torch decoder-layer parameter of its sources ({xid}: the expert), when renamed


@dataclass
class MetadataValue:
    key: str
    type: str
    value: Any


@dataclass
class Manifest:
    architecture: str
    gguf_arch: str
    quant: str
    file_type: str
    source: dict[str, Any]  # path, fingerprint, n_tensors, bytes
    layers: dict[str, Any]  # trunk, mtp (declared), mtp_found, mtp_kept, mtp_blocks, mtp_mode (keep|drop|absent_ok)
    counts: dict[str, int]  # output tensors per role
    bytes_in: int
    bytes_out: int
    vocab: dict[str, Any]
    metadata: list[MetadataValue]
    tensors: list[TensorEntry]
    dropped: list[dict[str, str]] = field(default_factory=list)
    optional_absent: list[str] = field(default_factory=list)
    imatrix: dict[str, Any] | None = None  # the importance matrix used and what it covers
    format: str = FORMAT

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Manifest":
        validate("manifest.schema.json", data, "manifest")
        fields = dict(data)
        fields["metadata"] = [MetadataValue(**m) for m in data["metadata"]]
        fields["tensors"] = [TensorEntry(**t) for t in data["tensors"]]
        return cls(**fields)

    def validate(self) -> None:
        validate("manifest.schema.json", self.to_json(), "manifest")

    def write(self, path: Path) -> None:
        self.validate()
        write_json_atomic(path, self.to_json())

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read manifest: {exc}") from None
        return cls.from_json(data)

    def entry(self, name: str) -> TensorEntry:
        for tensor in self.tensors:
            if tensor.name == name:
                return tensor
        raise KeyError(name)


def load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("mtpmanifest.schemas").joinpath(name).read_text())


def schema_errors(schema_name: str, data: Any) -> list[str]:
    """Every violation at once, each as 'path: message'."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path))
    return [f"{'/'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errors]


def validate(schema_name: str, data: Any, what: str) -> None:
    errors = schema_errors(schema_name, data)
    if errors:
        error = VerificationError if what == "tensors.json" else ConfigError
        raise error(f"{what} violates {schema_name}: {len(errors)} error(s): {errors[0]}", errors)


def write_json_atomic(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
