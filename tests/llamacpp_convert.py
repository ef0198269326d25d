"""llama.cpp's own converter (convert_hf_to_gguf.py) as a reference for the GGUF layout we write.

`convert_with_llamacpp(ckpt_dir, out_path)` runs the converter that ships in the llama-cpp-python sdist on a
checkpoint (in a child process, `--outtype f32`) and returns the layout of what it wrote:
{"tensors": {name: (ne shape, type name)}, "keys": {key: value}}. `gguf_layout(path)` reads our files the
same way; `layout_differences(ours, theirs)` lists what differs.

Where the sources come from, first hit wins: $MTPMANIFEST_LLAMACPP_SRC (a llama.cpp tree);
/tmp/sdist/llama_cpp_python-<installed version>/vendor/llama.cpp; a cache
(~/.cache/mtpmanifest/llamacpp-src, or $MTPMANIFEST_CACHE) filled once by `pip download --no-binary :all:` of
the installed llama-cpp-python version, of which only the converter, conversion/ and gguf-py/ are unpacked.

The converter's tokenizer step is replaced by a no-op: every family's set_vocab insists on the release's own
tokenizer (GLM looks up [gMASK], <|user|> …; all check the pre-tokenizer hash), while the fixtures share one
small BPE tokenizer. Our vocabulary is written by mtpmanifest.vocab and tested there, so tokenizer.* keys are
left out of the comparison anyway.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

import gguf

SRC_ENV = "MTPMANIFEST_LLAMACPP_SRC"
CACHE_ENV = "MTPMANIFEST_CACHE"
CONVERTER = "convert_hf_to_gguf.py"
NEEDED = (CONVERTER, "conversion/", "gguf-py/")  # what the converter imports, relative to the llama.cpp tree

# general.* keys that name or describe the model (file name, directory, size label, model card) rather than
# how llama.cpp must run it; they legitimately differ between two converters.
PROVENANCE_KEYS = frozenset({
    "general.name", "general.basename", "general.finetune", "general.version", "general.size_label",
    "general.organization", "general.author", "general.description", "general.url", "general.doi",
    "general.uuid", "general.repo_url", "general.license", "general.license.name", "general.license.link",
    "general.tags", "general.languages", "general.datasets", "general.base_model.count",
})
PROVENANCE_PREFIXES = ("tokenizer.", "general.base_model.", "general.dataset.", "general.source.")

# The child: import the converter as a module, make set_vocab a no-op on the model class it picks, run main().
_DRIVER = r"""
import json, os, sys
src, runs = sys.argv[1], json.loads(sys.argv[2])
sys.path[:0] = [src, src + "/gguf-py"]
sys.argv = [src + "/convert_hf_to_gguf.py"]
import convert_hf_to_gguf as conv
_pick = conv.get_model_class
def get_model_class(*args, **kwargs):
    cls = _pick(*args, **kwargs)
    cls.set_vocab = lambda self: None  # tokenizer.* keys are not compared (see tests/llamacpp_convert.py)
    return cls
conv.get_model_class = get_model_class
if os.environ.get("MTPM_RAW_CONFIG") == "1":  # read config.json itself, not transformers' re-spelling of it
    import conversion.base as base
    class _RawConfig:
        @staticmethod
        def from_pretrained(*args, **kwargs):
            raise ValueError("config.json read as is (tests/llamacpp_convert.py raw_config)")
    base.AutoConfig = _RawConfig
for args in runs:  # several checkpoints in one process: torch and the converter are imported once
    sys.argv = [src + "/convert_hf_to_gguf.py", *args]
    conv.main()
"""


def _is_tree(path: Path) -> bool:
    return (path / CONVERTER).is_file() and (path / "conversion").is_dir() and (path / "gguf-py" / "gguf").is_dir()


def _version() -> str:
    return metadata.version("llama_cpp_python")


def _cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mtpmanifest") / "llamacpp-src"


def _download(version: str, cache: Path) -> Path:
    """pip-download the sdist of llama-cpp-python==version and unpack the converter's files into cache."""
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"llama_cpp_python-{version}"
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               f"llama-cpp-python=={version}", "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not sdists:
            raise RuntimeError(f"cannot download the llama-cpp-python {version} sdist:\n{proc.stdout}\n{proc.stderr}")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(sdists[0]) as tar:
            top = tar.getnames()[0].split("/")[0]
            prefix = f"{top}/vendor/llama.cpp/"
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(NEEDED)]
            tar.extractall(unpacked, members=members, filter="data")
        tree = unpacked / top / "vendor" / "llama.cpp"
        if not _is_tree(tree):
            raise RuntimeError(f"{sdists[0].name}: no vendor/llama.cpp/{CONVERTER} with conversion/ and gguf-py/")
        try:
            os.rename(unpacked / top, target)  # atomic: a concurrent run either wins or finds it done
        except OSError:
            if not _is_tree(target / "vendor" / "llama.cpp"):
                raise
    return target / "vendor" / "llama.cpp"


def llamacpp_source() -> Path:
    """The llama.cpp tree whose convert_hf_to_gguf.py is the reference (see the module docstring)."""
    if os.environ.get(SRC_ENV):
        tree = Path(os.environ[SRC_ENV])
        if not _is_tree(tree):
            raise RuntimeError(f"${SRC_ENV}={tree}: no {CONVERTER} with conversion/ and gguf-py/ there")
        return tree
    version = _version()
    for tree in (Path(f"/tmp/sdist/llama_cpp_python-{version}/vendor/llama.cpp"),
                 _cache_root() / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"):
        if _is_tree(tree):
            return tree
    return _download(version, _cache_root())


def _value(field: gguf.ReaderField):
    value = field.contents()
    return tuple(value) if isinstance(value, list) else value


def gguf_layout(path) -> dict:
    """{"tensors": {name: (ne shape, type name)}, "keys": {key: value}} of a GGUF file."""
    reader = gguf.GGUFReader(str(path))
    keys = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = {t.name: (tuple(int(d) for d in t.shape), t.tensor_type.name) for t in reader.tensors}
    return {"tensors": tensors, "keys": keys}


def convert_with_llamacpp(ckpt_dir, out_path, *extra_args: str, timeout: float = 600, raw_config: bool = False) -> dict:
    """Run llama.cpp's convert_hf_to_gguf.py (f32) on ckpt_dir, write out_path, return its layout."""
    return convert_many_with_llamacpp([(ckpt_dir, out_path)], *extra_args, timeout=timeout, raw_config=raw_config)[0]


def convert_many_with_llamacpp(jobs, *extra_args: str, timeout: float = 600, raw_config: bool = False) -> list[dict]:
    """convert_with_llamacpp for several (ckpt_dir, out_path) pairs in one child process (one conversion
    costs ~4 s, nearly all of it importing torch and the converter). extra_args go to every run.
    raw_config: the converter reads config.json as is. It loads it through transformers' AutoConfig first, and
    a transformers that knows the model_type under another class re-spells the keys (transformers 5 reads
    Step-3.5's `step3p5` as Step3p7TextConfig: num_attention_groups becomes num_key_value_heads, and the
    converter's step3 code fails with KeyError 'num_attention_groups'); an older transformers falls back to
    config.json, which is what this option does."""
    tree = llamacpp_source()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_LOCAL_GGUF", "MTPM_RAW_CONFIG")}
    if raw_config:
        env["MTPM_RAW_CONFIG"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(tree / "gguf-py"), env.get("PYTHONPATH")) if p)
    runs = [[str(ckpt), "--outfile", str(out), "--outtype", "f32", *extra_args] for ckpt, out in jobs]
    cmd = [sys.executable, "-c", _DRIVER, str(tree), json.dumps(runs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(tree))
    missing = [str(ckpt) for ckpt, out in jobs if not Path(out).is_file()]
    if proc.returncode != 0 or missing:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
        raise RuntimeError(f"llama.cpp's {CONVERTER} failed on {', '.join(missing) or jobs[-1][0]} "
                           f"(rc {proc.returncode}):\n{tail}")
    return [gguf_layout(out) for _, out in jobs]


def is_provenance(key: str) -> bool:
    return key in PROVENANCE_KEYS or key.startswith(PROVENANCE_PREFIXES)


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            return abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)), abs(float(b)))
        except (TypeError, ValueError):
            return False
    return a == b


def layout_differences(ours: dict, theirs: dict, *, ignore_keys=(), compare_values: bool = True,
                       ignore_values=("general.file_type",), compare_types: bool = False) -> list[str]:
    """What differs between two layouts: tensor names, shapes (and types with compare_types), the sets of
    metadata keys (tokenizer.* and naming/provenance general.* keys left out, and `ignore_keys`), and the
    values of the keys both have (except `ignore_values`). Empty when they agree."""
    diffs: list[str] = []
    ours_t, theirs_t = ours["tensors"], theirs["tensors"]
    diffs += [f"tensor only in ours: {n} {ours_t[n][0]}" for n in sorted(set(ours_t) - set(theirs_t))]
    diffs += [f"tensor only in llama.cpp's: {n} {theirs_t[n][0]}" for n in sorted(set(theirs_t) - set(ours_t))]
    for name in sorted(set(ours_t) & set(theirs_t)):
        if ours_t[name][0] != theirs_t[name][0]:
            diffs.append(f"shape of {name}: ours {ours_t[name][0]}, llama.cpp's {theirs_t[name][0]}")
        elif compare_types and ours_t[name][1] != theirs_t[name][1]:
            diffs.append(f"type of {name}: ours {ours_t[name][1]}, llama.cpp's {theirs_t[name][1]}")
    ignored = set(ignore_keys)
    ours_k = {k: v for k, v in ours["keys"].items() if not is_provenance(k) and k not in ignored}
    theirs_k = {k: v for k, v in theirs["keys"].items() if not is_provenance(k) and k not in ignored}
    diffs += [f"key only in ours: {k} = {ours_k[k]!r}" for k in sorted(set(ours_k) - set(theirs_k))]
    diffs += [f"key only in llama.cpp's: {k} = {theirs_k[k]!r}" for k in sorted(set(theirs_k) - set(ours_k))]
    if compare_values:
        for key in sorted(set(ours_k) & set(theirs_k) - set(ignore_values)):
            if not _same(ours_k[key], theirs_k[key]):
                diffs.append(f"value of {key}: ours {ours_k[key]!r}, llama.cpp's {theirs_k[key]!r}")
    return diffs
