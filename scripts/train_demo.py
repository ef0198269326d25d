#!/usr/bin/env python
"""Train the embedded demo model (tiny DeepSeek-V3 + one MTP layer) on Python stdlib sources, ship it as FP8.

Usage: python scripts/train_demo.py [--steps N] [--seq-len T] [--batch B] [--out DIR] ...
(default: the full run that produced mtpmanifest/demo/, about 20 minutes on 2 CPU cores).

Objective (DeepSeek-V3's multi-token prediction): loss = CE(trunk, t_{i+1}) + lambda * CE(MTP head, t_{i+2}).
The trunk is transformers' DeepseekV3ForCausalLM in float32 with TINY_CONFIG. The MTP module follows the release:
    x_i = eh_proj(cat[enorm(E(t_{i+1})), hnorm(h_i)])     h_i = trunk hidden AFTER model.norm (what llama.cpp feeds)
    y   = DeepseekV3DecoderLayer #num_hidden_layers (MoE), causal over rows i = 0..T-2 at RoPE positions 0..T-2
    logits_i = head(shared_head.norm(y_i))                -> predicts t_{i+2}
E and head are the trunk's embed_tokens / lm_head during training (shared, as DeepSeek does) and are written into
the checkpoint again as the MTP layer's own copies (embed_tokens, shared_head.head).

Routing is balanced the DeepSeek-V3 way, without an auxiliary loss: after every step each router's
e_score_correction_bias moves by gamma * sign(mean load - expert load).

Data: every stdlib .py file (minus tests, codec tables, generated data), split by a hash of its relative path;
held-out files are never trained on. Written beside the checkpoint: heldout.txt (held-out source used to measure
acceptance), calibration.txt (training-distribution source for calibration), training.json (settings + results),
README.md. The results are measured on heldout.txt from the FP8 checkpoint as written, dequantized.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import pathlib
import platform
import sys
import sysconfig
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mtpmanifest.fixtures import tokenizer as tok_mod  # noqa: E402
from mtpmanifest.fixtures.deepseek_v3 import TINY_CONFIG, load_dequantized, tensor_specs, write_checkpoint  # noqa: E402

# ------------------------------------------------------------------------------------------------------- data

SPLIT_SALT = "mtpmanifest-demo-split-v1"
HELDOUT_BUCKETS = 20  # 1 in 20 files (by hash) is held out
EXCLUDED_DIRS = {"site-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data",
                 "lib-dynload"}
HELDOUT_TARGET_CHARS = 28_000      # heldout.txt: whole held-out files (1-16 KB each) until at least this much
CALIBRATION_TARGET_CHARS = 64_000  # calibration.txt: whole training files (2-24 KB each) until at least this much


def split_key(rel: str) -> str:
    return hashlib.sha256(f"{SPLIT_SALT}:{rel}".encode()).hexdigest()


def stdlib_files() -> list[tuple[str, pathlib.Path]]:
    """(relative posix path, path) of the stdlib's .py sources used as corpus, sorted by relative path."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in root.rglob("*.py"):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS or part.startswith("config-") for part in rel.parts[:-1]):
            continue
        if rel.name.startswith("_sysconfigdata"):  # machine-generated build settings
            continue
        out.append((rel.as_posix(), p))
    return sorted(out)


def split_files(files):
    """Deterministic split: a file is held out when its hash falls in bucket 0, unless the demo tokenizer was
    trained on it (those always train, so held-out text is unseen by the tokenizer too)."""
    tokenizer_files = set(tok_mod.CORPUS_FILES)
    train, heldout = [], []
    for rel, p in files:
        bucket = int(split_key(rel)[:8], 16) % HELDOUT_BUCKETS
        (heldout if bucket == 0 and rel not in tokenizer_files else train).append((rel, p))
    return train, heldout


def read(p: pathlib.Path) -> str:
    return p.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")


def pick_whole_files(files, lo: int, hi: int, target: int) -> tuple[list[str], str]:
    """Whole files of lo..hi characters, in hash order, until the text reaches `target` characters."""
    names, parts, total = [], [], 0
    for rel, p in sorted(files, key=lambda f: split_key(f[0])):
        text = read(p)
        if not lo <= len(text) <= hi:
            continue
        names.append(rel)
        parts.append(text if text.endswith("\n") else text + "\n")
        total += len(parts[-1])
        if total >= target:
            break
    return names, "".join(parts)


def load_tokenizer():
    from tokenizers import Tokenizer

    return Tokenizer.from_str(tok_mod.tokenizer_json(TINY_CONFIG["vocab_size"]))


def token_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    """All files' tokens, each file starting with BOS, concatenated in the given order."""
    ids: list[int] = []
    for enc in tokenizer.encode_batch(texts):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.long)


# ------------------------------------------------------------------------------------------------------ model


def hf_config(experts_impl: str):
    from transformers import DeepseekV3Config

    cfg = {k: v for k, v in TINY_CONFIG.items() if k != "quantization_config"}
    return DeepseekV3Config(**cfg, experts_implementation=experts_impl, attn_implementation="sdpa")


class MTPModule(nn.Module):
    """DeepSeek-V3's MTP module minus the shared embedding / output head (the caller supplies and applies them)."""

    def __init__(self, config):
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
            DeepseekV3DecoderLayer, DeepseekV3RMSNorm, DeepseekV3RotaryEmbedding)

        super().__init__()
        h, eps = config.hidden_size, config.rms_norm_eps
        self.enorm = DeepseekV3RMSNorm(h, eps=eps)
        self.hnorm = DeepseekV3RMSNorm(h, eps=eps)
        self.eh_proj = nn.Linear(2 * h, h, bias=False)
        self.block = DeepseekV3DecoderLayer(config, layer_idx=config.num_hidden_layers)
        self.shared_head_norm = DeepseekV3RMSNorm(h, eps=eps)
        self.rotary_emb = DeepseekV3RotaryEmbedding(config=config)
        assert config._attn_implementation == "sdpa"  # attention_mask=None below then means causal

    def forward(self, next_embeds: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """next_embeds = E(t_{i+1}), hidden = post-norm trunk h_i, rows i = 0..n-1 -> normed states for t_{i+2}."""
        x = self.eh_proj(torch.cat([self.enorm(next_embeds), self.hnorm(hidden)], dim=-1))
        pos = torch.arange(x.shape[1], device=x.device)[None]
        y = self.block(x, attention_mask=None, position_ids=pos, position_embeddings=self.rotary_emb(x, pos))
        return self.shared_head_norm(y)


def init_mtp(mtp: MTPModule, std: float) -> None:
    """The trunk's initialisation (transformers' _init_weights): N(0, std) matrices, unit norms, zero bias."""
    for name, p in mtp.named_parameters():
        with torch.no_grad():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, std)
    for name, b in mtp.named_buffers():
        if name.endswith("e_score_correction_bias"):
            b.zero_()


def mtp_prefix() -> str:
    return f"model.layers.{TINY_CONFIG['num_hidden_layers']}."


def _split_experts(prefix: str, state: dict) -> dict:
    """transformers' fused experts -> the release's per-expert names; other entries unchanged."""
    out = {}
    inter = TINY_CONFIG["moe_intermediate_size"]
    for k, v in state.items():
        if k.endswith("mlp.experts.gate_up_proj"):
            base = prefix + k[: -len("gate_up_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.gate_proj.weight"] = v[e, :inter]
                out[f"{base}{e}.up_proj.weight"] = v[e, inter:]
        elif k.endswith("mlp.experts.down_proj"):
            base = prefix + k[: -len("down_proj")]
            for e in range(v.shape[0]):
                out[f"{base}{e}.down_proj.weight"] = v[e]
        else:
            out[prefix + k] = v
    return out


def _fuse_experts(state: dict, prefix: str) -> dict:
    """The release's per-expert names under `prefix` -> transformers' fused layout (keys relative to prefix)."""
    n_exp = TINY_CONFIG["n_routed_experts"]
    rel = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    out = {}
    for k in list(rel):
        if ".mlp.experts.0.gate_proj.weight" in "." + k:
            base = k[: -len("0.gate_proj.weight")]
            out[base + "gate_up_proj"] = torch.stack([
                torch.cat([rel.pop(f"{base}{e}.gate_proj.weight"), rel.pop(f"{base}{e}.up_proj.weight")])
                for e in range(n_exp)])
            out[base + "down_proj"] = torch.stack([rel.pop(f"{base}{e}.down_proj.weight") for e in range(n_exp)])
    out.update({k: v for k, v in rel.items() if ".experts." not in k})
    return out


def export_weights(trunk, mtp: MTPModule) -> dict[str, np.ndarray]:
    """Every tensor of tensor_specs(TINY_CONFIG) as float32, under the release's names."""
    state = {k: v.detach().float().contiguous() for k, v in trunk.state_dict().items()}
    out = _split_experts("", state)
    p = mtp_prefix()
    out.update(_split_experts(p, {k: v.detach().float() for k, v in mtp.block.state_dict().items()}))
    out[p + "enorm.weight"] = mtp.enorm.weight.detach()
    out[p + "hnorm.weight"] = mtp.hnorm.weight.detach()
    out[p + "eh_proj.weight"] = mtp.eh_proj.weight.detach()
    out[p + "shared_head.norm.weight"] = mtp.shared_head_norm.weight.detach()
    out[p + "embed_tokens.weight"] = trunk.model.embed_tokens.weight.detach()  # shared: written as the MTP copy
    out[p + "shared_head.head.weight"] = trunk.lm_head.weight.detach()
    expected = {n for n, _, _ in tensor_specs(TINY_CONFIG)}
    if set(out) != expected:
        raise RuntimeError(f"export mismatch: missing {sorted(expected - set(out))[:5]}, "
                           f"extra {sorted(set(out) - expected)[:5]}")
    return {k: v.float().contiguous().numpy().copy() for k, v in out.items()}


class EvalModel:
    """Trunk + MTP head with the MTP layer's own embedding / head copies, from a dict of release-named tensors."""

    def __init__(self, weights: dict, experts_impl: str):
        from transformers import DeepseekV3ForCausalLM

        p = mtp_prefix()
        cfg = hf_config(experts_impl)
        self.trunk = DeepseekV3ForCausalLM(cfg).float().eval()
        trunk_state = {k: v for k, v in weights.items() if not k.startswith(p)}
        fused = _fuse_experts(trunk_state, "")
        self.trunk.load_state_dict(fused, strict=True)
        self.mtp = MTPModule(self.trunk.config).eval()
        self.mtp.block.load_state_dict(_fuse_experts({k: v for k, v in weights.items() if k.startswith(p)
                                                      and k[len(p):].startswith(("self_attn.", "mlp.",
                                                                                "input_layernorm.",
                                                                                "post_attention_layernorm."))},
                                                     p), strict=True)
        with torch.no_grad():
            self.mtp.enorm.weight.copy_(weights[p + "enorm.weight"])
            self.mtp.hnorm.weight.copy_(weights[p + "hnorm.weight"])
            self.mtp.eh_proj.weight.copy_(weights[p + "eh_proj.weight"])
            self.mtp.shared_head_norm.weight.copy_(weights[p + "shared_head.norm.weight"])
        self.mtp_embed = weights[p + "embed_tokens.weight"].float()
        self.mtp_head = weights[p + "shared_head.head.weight"].float()

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk logits [B, T, V] and MTP logits [B, T-1, V] (row i predicts t_{i+2})."""
        h = self.trunk.model(ids).last_hidden_state
        trunk_logits = self.trunk.lm_head(h)
        z = self.mtp(F.embedding(ids[:, 1:], self.mtp_embed), h[:, :-1])
        return trunk_logits, z @ self.mtp_head.T


@torch.no_grad()
def evaluate(model: EvalModel, ids: torch.Tensor, seq_len: int, batch: int) -> dict:
    """Held-out metrics over non-overlapping windows of seq_len tokens (a shorter tail window included).

    MTP accuracy/loss: rows i = 0..L-3 against t_{i+2}. Acceptance (teacher-forced, greedy): rows i = 0..L-2,
    argmax MTP logits at i == argmax trunk logits at i+1 (the token the model itself would emit there)."""
    n = len(ids)
    windows = [ids[s:s + seq_len] for s in range(0, n, seq_len)]
    windows = [w for w in windows if len(w) >= 3]
    sums = dict(trunk_nll=0.0, trunk_hit=0, trunk_n=0, mtp_nll=0.0, mtp_hit=0, mtp_n=0, acc_hit=0, acc_n=0)
    n_exp = TINY_CONFIG["n_routed_experts"]
    loads: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in list(model.trunk.named_modules()) + [(mtp_prefix() + k, m)
                                                          for k, m in model.mtp.block.named_modules()]:
        if type(mod).__name__ == "DeepseekV3TopkRouter":
            key = name.replace("model.layers.", "layer ").replace(".mlp.gate", "")
            loads[key] = torch.zeros(n_exp)

            def hook(_m, _inp, out, key=key):
                loads[key] += torch.bincount(out[2].reshape(-1), minlength=n_exp).float()
            hooks.append(mod.register_forward_hook(hook))
    try:
        groups: dict[int, list[torch.Tensor]] = {}
        for w in windows:
            groups.setdefault(len(w), []).append(w)
        for length, ws in groups.items():
            for b in range(0, len(ws), batch):
                x = torch.stack(ws[b:b + batch])
                tl, ml = model.logits(x)
                t_lp = tl[:, :-1].log_softmax(-1)
                tgt = x[:, 1:]
                sums["trunk_nll"] -= t_lp.gather(-1, tgt[..., None]).sum().item()
                sums["trunk_hit"] += (tl[:, :-1].argmax(-1) == tgt).sum().item()
                sums["trunk_n"] += tgt.numel()
                m_lp = ml[:, :-1].log_softmax(-1)
                tgt2 = x[:, 2:]
                sums["mtp_nll"] -= m_lp.gather(-1, tgt2[..., None]).sum().item()
                sums["mtp_hit"] += (ml[:, :-1].argmax(-1) == tgt2).sum().item()
                sums["mtp_n"] += tgt2.numel()
                sums["acc_hit"] += (ml.argmax(-1) == tl[:, 1:].argmax(-1)).sum().item()
                sums["acc_n"] += ml.shape[0] * ml.shape[1]
    finally:
        for hk in hooks:
            hk.remove()
    balance = {k: round(float(v.max() / v.mean()), 3) for k, v in loads.items()}
    return {
        "tokens": n, "windows": len(windows), "window": seq_len,
        "trunk_loss": round(sums["trunk_nll"] / sums["trunk_n"], 4),
        "trunk_top1": round(sums["trunk_hit"] / sums["trunk_n"], 4),
        "mtp_loss": round(sums["mtp_nll"] / sums["mtp_n"], 4),
        "mtp_top1": round(sums["mtp_hit"] / sums["mtp_n"], 4),
        "acceptance": round(sums["acc_hit"] / sums["acc_n"], 4),
        "positions": {"trunk": sums["trunk_n"], "mtp": sums["mtp_n"], "acceptance": sums["acc_n"]},
        "expert_load_max_over_mean": balance,
    }


# ---------------------------------------------------------------------------------------------------- training


def lr_at(step: int, args) -> float:
    """Linear warm-up, then cosine decay to min_lr_ratio * lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--mtp-lambda", type=float, default=0.3)
    ap.add_argument("--bias-gamma", type=float, default=1e-3, help="aux-loss-free balancing bias update speed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--experts-impl", default="eager", help="transformers experts implementation (same maths)")
    ap.add_argument("--eval-batch", type=int, default=16)
    ap.add_argument("--eval-tokens", type=int, default=None, help="measure on the first N held-out tokens only")
    ap.add_argument("--train-files", type=int, default=None,
                    help="train on the first N training files (hash order) only: for smoke tests")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="default: the package's demo directory")
    args = ap.parse_args(argv)
    args.warmup = max(1, min(args.warmup, args.steps // 10 or 1))
    return args


def main(argv: list[str]) -> int:
    from tqdm import tqdm
    from transformers import DeepseekV3ForCausalLM

    args = parse_args(argv)
    if args.out is None:
        from mtpmanifest.demo import DEMO_DIR
        args.out = DEMO_DIR
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t_start = time.time()

    # --- data
    files = stdlib_files()
    train_files, heldout_files = split_files(files)
    heldout_names, heldout_text = pick_whole_files(heldout_files, 1_000, 16_000, HELDOUT_TARGET_CHARS)
    calib_names, calib_text = pick_whole_files(train_files, 2_000, 24_000, CALIBRATION_TARGET_CHARS)
    (out / "heldout.txt").write_text(heldout_text, encoding="utf-8", newline="\n")
    (out / "calibration.txt").write_text(calib_text, encoding="utf-8", newline="\n")
    tokenizer = load_tokenizer()
    used = sorted(train_files, key=lambda f: split_key(f[0]))[: args.train_files] if args.train_files else train_files
    stream = token_stream(tokenizer, [read(p) for _, p in used])
    heldout_ids = torch.tensor(tokenizer.encode(heldout_text).ids, dtype=torch.long)
    eval_ids = heldout_ids[: args.eval_tokens]
    T, B = args.seq_len, args.batch
    n_chunks = len(stream) // T
    chunks = stream[: n_chunks * T].view(n_chunks, T)
    gen = torch.Generator().manual_seed(args.seed)
    order = torch.empty(0, dtype=torch.long)
    print(f"corpus: {len(files)} stdlib files, {len(train_files)} train ({len(stream):,} tokens, {n_chunks:,} "
          f"windows of {T}), {len(heldout_files)} held out; heldout.txt {len(heldout_text):,} chars "
          f"({len(heldout_ids):,} tokens, {len(heldout_names)} files), calibration.txt {len(calib_text):,} chars",
          flush=True)

    # --- model
    torch.manual_seed(args.seed)
    cfg = hf_config(args.experts_impl)
    trunk = DeepseekV3ForCausalLM(cfg).float().train()
    mtp = MTPModule(trunk.config).train()
    init_mtp(mtp, cfg.initializer_range)
    params = list(trunk.named_parameters()) + [("mtp." + n, p) for n, p in mtp.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2]
    no_decay = [p for n, p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    n_params = sum(p.numel() for _, p in params)

    routers = [m for m in list(trunk.modules()) + list(mtp.modules()) if type(m).__name__ == "DeepseekV3TopkRouter"]
    step_loads: dict[int, torch.Tensor] = {}

    def count_load(mod, _inp, output):
        step_loads[id(mod)] = step_loads.get(id(mod), 0) + torch.bincount(
            output[2].reshape(-1), minlength=mod.num_experts).float()
    for r in routers:
        r.register_forward_hook(count_load)

    # --- train
    print(f"training {n_params:,} parameters: {args.steps} steps x {B} x {T} tokens, lr {args.lr}, "
          f"lambda {args.mtp_lambda}, seed {args.seed}, {args.threads} threads", flush=True)
    t_train = time.time()
    ema_t = ema_m = None
    history = []
    pos = 0
    bar = tqdm(range(args.steps), desc="train", mininterval=5.0, file=sys.stderr, dynamic_ncols=False, ncols=110)
    for step in bar:
        if pos + B > len(order):  # a new seeded permutation per epoch
            order = torch.randperm(n_chunks, generator=gen)
            pos = 0
        ids = chunks[order[pos:pos + B]]
        pos += B
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        step_loads.clear()
        h = trunk.model(ids).last_hidden_state                      # post-norm trunk hidden
        trunk_logits = trunk.lm_head(h[:, :-1])
        loss_trunk = F.cross_entropy(trunk_logits.reshape(-1, cfg.vocab_size), ids[:, 1:].reshape(-1))
        z = mtp(trunk.model.embed_tokens(ids[:, 1:-1]), h[:, :-2])  # rows 0..T-3: the ones with a t_{i+2} target
        mtp_logits = trunk.lm_head(z)
        loss_mtp = F.cross_entropy(mtp_logits.reshape(-1, cfg.vocab_size), ids[:, 2:].reshape(-1))
        loss = loss_trunk + args.mtp_lambda * loss_mtp
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], args.grad_clip)
        opt.step()
        with torch.no_grad():  # aux-loss-free load balancing (DeepSeek-V3 sec. 2.1.2)
            for r in routers:
                load = step_loads[id(r)]
                r.e_score_correction_bias += args.bias_gamma * torch.sign(load.mean() - load)
        lt, lm = loss_trunk.item(), loss_mtp.item()
        ema_t = lt if ema_t is None else 0.98 * ema_t + 0.02 * lt
        ema_m = lm if ema_m is None else 0.98 * ema_m + 0.02 * lm
        if step % 50 == 0 or step == args.steps - 1:
            history.append({"step": step, "trunk_loss": round(ema_t, 4), "mtp_loss": round(ema_m, 4)})
        bar.set_postfix(trunk=f"{ema_t:.3f}", mtp=f"{ema_m:.3f}", lr=f"{lr_at(step, args):.1e}", refresh=False)
    bar.close()
    train_seconds = time.time() - t_train
    print(f"trained in {train_seconds / 60:.1f} min; smoothed train loss trunk {ema_t:.3f}, mtp {ema_m:.3f}",
          flush=True)

    # --- ship as FP8 with 128x128 block scales, then measure from what was written
    trunk.eval()
    mtp.eval()
    weights = export_weights(trunk, mtp)
    write_checkpoint(out, TINY_CONFIG, fp8=True, seed=args.seed, weights=weights)
    f32_metrics = evaluate(EvalModel({k: torch.from_numpy(v) for k, v in weights.items()}, args.experts_impl),
                           eval_ids, T, args.eval_batch)
    fp8_metrics = evaluate(EvalModel(load_dequantized(out), args.experts_impl), eval_ids, T, args.eval_batch)
    total_seconds = time.time() - t_start

    import tokenizers
    import transformers

    record = {
        "script": "scripts/train_demo.py",
        "argv": argv,
        "settings": {
            "steps": args.steps, "seq_len": T, "batch": B, "tokens_per_step": B * T,
            "tokens_seen": args.steps * B * T,
            "optimizer": "AdamW", "lr": args.lr, "betas": [0.9, 0.95], "weight_decay": args.weight_decay,
            "weight_decay_on": "matrices and embeddings (ndim >= 2); not norms",
            "schedule": f"linear warm-up {args.warmup} steps, cosine decay to {args.min_lr_ratio} x lr",
            "grad_clip": args.grad_clip, "mtp_lambda": args.mtp_lambda,
            "objective": "CE(trunk, t[i+1]) + mtp_lambda * CE(MTP head, t[i+2])",
            "mtp_hidden": "trunk hidden after model.norm", "shared_embedding_and_head": True,
            "load_balancing": f"aux-loss-free: e_score_correction_bias += {args.bias_gamma} * sign(mean - load) "
                              "per step, per router",
            "seed": args.seed, "threads": args.threads, "dtype": "float32",
            "experts_implementation": args.experts_impl, "parameters": n_params,
        },
        "data": {
            "source": "Python standard library .py files (offline)",
            "python": platform.python_version(),
            "excluded_dirs": sorted(EXCLUDED_DIRS) + ["config-*"],
            "split": f"held out iff int(sha256('{SPLIT_SALT}:' + relpath)[:8], 16) % {HELDOUT_BUCKETS} == 0, "
                     "except the tokenizer's own corpus files (always train)",
            "files": len(files), "train_files": len(used), "heldout_files": len(heldout_files),
            "train_tokens": len(stream), "train_windows": n_chunks,
            "order": "non-overlapping seq_len windows of the concatenated train stream (BOS per file), "
                     "a fresh seeded torch.randperm per epoch",
            "heldout_txt": {"files": heldout_names, "chars": len(heldout_text), "tokens": len(heldout_ids),
                            "sha256": hashlib.sha256(heldout_text.encode()).hexdigest()},
            "calibration_txt": {"files": calib_names, "chars": len(calib_text),
                                "sha256": hashlib.sha256(calib_text.encode()).hexdigest()},
        },
        "wall_seconds": {"train": round(train_seconds, 1), "total": round(total_seconds, 1)},
        "train_loss_history": history,
        "results": {"fp8_checkpoint": fp8_metrics, "float32_before_fp8": f32_metrics},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme(record), encoding="utf-8", newline="\n")

    print(f"\nheld-out ({fp8_metrics['tokens']:,} tokens, windows of {T}) — FP8 checkpoint as shipped "
          f"(float32 before FP8 in brackets):")
    for key, label in (("trunk_loss", "trunk loss"), ("trunk_top1", "trunk top-1"), ("mtp_loss", "MTP loss"),
                       ("mtp_top1", "MTP top-1 (t+2)"), ("acceptance", "acceptance")):
        print(f"  {label:<16} {fp8_metrics[key]:.4f}  ({f32_metrics[key]:.4f})")
    print(f"wall: train {train_seconds / 60:.1f} min, total {total_seconds / 60:.1f} min")
    for name in ("model.safetensors", "heldout.txt", "calibration.txt", "training.json"):
        print(f"{(out / name).stat().st_size:>10}  {out / name}")
    return 0


def readme(r: dict) -> str:
    s, d, fp8, f32 = r["settings"], r["data"], r["results"]["fp8_checkpoint"], r["results"]["float32_before_fp8"]
    w, last = r["wall_seconds"], r["train_loss_history"][-1]
    return f"""\
# Embedded demo model (trained)

A tiny DeepSeek-V3 with one MTP / NextN layer, in the official release's on-disk format, **trained** on Python
standard-library sources by `scripts/train_demo.py` so that its MTP head actually predicts (and so has something
to lose under quantization).

## Files

- `config.json`: `DeepseekV3ForCausalLM` (`TINY_CONFIG`): hidden 256, 4 trunk layers (layer 0 dense, 1-3 MoE with
  8 routed + 1 shared expert, top-2 of 2 groups, sigmoid routing), MLA (q_lora_rank 64, kv_lora_rank 32),
  vocab 2048, one MTP layer (`num_nextn_predict_layers: 1`) stored as `model.layers.4.*`.
- `model.safetensors`: the trained weights written with `write_checkpoint(demo, TINY_CONFIG, fp8=True,
  weights=trained)`: every decoder-layer projection F8_E4M3 with a 128x128-block `weight_scale_inv` (F32);
  embeddings, norms, router, `eh_proj` and `shared_head.*` BF16; `e_score_correction_bias` F32 (trained by the
  balancing rule below, so non-zero).
- `tokenizer.json` / `tokenizer_config.json`: the 2048-token byte-level BPE (DeepSeek-V3 pre-tokenizer splits,
  BOS/EOS ids 0/1), identical to what `scripts/make_demo.py` writes.
- `heldout.txt`: {d['heldout_txt']['chars']:,} characters ({d['heldout_txt']['tokens']:,} tokens) of held-out
  stdlib source, {len(d['heldout_txt']['files'])} whole files never trained on. Measure acceptance on this.
- `calibration.txt`: {d['calibration_txt']['chars']:,} characters of training-distribution source
  ({len(d['calibration_txt']['files'])} whole training files, disjoint from `heldout.txt`): the default
  calibration corpus.
- `training.json`: every setting, the data split and file lists, wall time, loss history and the results below.

## Training

`python scripts/train_demo.py` (defaults = the shipped run; `--out DIR` writes elsewhere).

- Trunk: transformers' `DeepseekV3ForCausalLM`, float32, {s['parameters']:,} trainable parameters with the
  MTP module. MTP module as in DeepSeek-V3: `x_i = eh_proj(cat[enorm(E(t_(i+1))), hnorm(h_i)])` with `h_i` the
  trunk hidden **after** `model.norm` (what llama.cpp feeds its head), then one `DeepseekV3DecoderLayer` (MoE,
  layer index 4, causal, RoPE positions 0..T-2), `shared_head.norm`, and the head. Embedding and head are
  shared with the trunk during training and written again as `model.layers.4.embed_tokens` /
  `shared_head.head`.
- Objective: `CE(trunk, t_(i+1)) + λ·CE(MTP, t_(i+2))`, λ = {s['mtp_lambda']}: DeepSeek-V3's value for the first
  (larger) part of its pre-training (it drops to 0.1 only for the last tokens); a short run like this one is
  all "first part". The MTP gradient flows into the trunk, as in DeepSeek-V3.
- {s['steps']} steps × batch {s['batch']} × seq len {s['seq_len']} = {s['tokens_seen']:,} tokens; AdamW
  (β 0.9/0.95, weight decay {s['weight_decay']} on matrices), lr {s['lr']} with {s['schedule']}; gradient clip
  {s['grad_clip']}; seed {s['seed']}; {s['threads']} threads.
- Routing balance without auxiliary loss (DeepSeek-V3): after every step each router's
  `e_score_correction_bias` moves by {r['settings']['load_balancing'].split('+= ')[1].split(' *')[0]} ×
  sign(mean load − expert load).
- Data: {d['files']} stdlib `.py` files of Python {d['python']} (tests, codec tables, `pydoc_data` and
  generated files excluded), split by file: {d['split']}. {d['train_files']} training files
  ({d['train_tokens']:,} tokens), {d['heldout_files']} held out. Order: {d['order']}.
- Wall time: {w['train'] / 60:.1f} min training, {w['total'] / 60:.1f} min in all, on 2 CPU cores shared with
  other jobs (the step rate followed their load). Smoothed training loss at the last step: trunk
  {last['trunk_loss']:.3f}, MTP {last['mtp_loss']:.3f} (still falling: the budget, not convergence, ends the run).
- The run is deterministic for a given stdlib, torch build and thread count (two toy-scale runs gave byte-identical
  checkpoints); another environment gives a similar, not bit-identical, model.

## Results (held-out, `heldout.txt`, {fp8['tokens']:,} tokens in windows of {fp8['window']})

Measured from the FP8 checkpoint as shipped, dequantized (float32 weights before FP8 rounding in brackets).
Acceptance = teacher-forced greedy agreement: the fraction of positions i where argmax of the MTP logits at i
equals argmax of the trunk logits at i+1 (the token the model itself would produce there).

| metric | value |
|---|---|
| trunk loss / top-1 (next token) | {fp8['trunk_loss']:.3f} / {fp8['trunk_top1']:.3f} ({f32['trunk_loss']:.3f} / {f32['trunk_top1']:.3f}) |
| MTP loss / top-1 (token after next, vs truth) | {fp8['mtp_loss']:.3f} / {fp8['mtp_top1']:.3f} ({f32['mtp_loss']:.3f} / {f32['mtp_top1']:.3f}) |
| MTP acceptance vs trunk | **{fp8['acceptance']:.3f}** ({f32['acceptance']:.3f}) |

Acceptance measures agreement with the trunk, not correctness: report the MTP top-1 and loss beside it (a
barely trained model where both heads emit the same frequent token scores a high acceptance at near-zero top-1).
The MTP head's t+2 accuracy is on a par with the trunk's t+1 accuracy because its input includes E(t_(i+1)):
it conditions on the same tokens as the trunk at i+1, through one more layer.

## Random-weight checkpoint for tests

`python scripts/make_demo.py OUT_DIR` writes the same format with random weights (seed 0), byte-reproducibly;
its `config.json` and tokenizer files are identical to the ones here.
"""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
