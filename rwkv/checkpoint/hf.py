"""Hugging Face / fla RWKV-7 directories <-> official x070 tensors (docs/model-spec.md §1.2, §4.4).

The RWKV-7 models on the Hugging Face hub are flash-linear-attention's `RWKV7ForCausalLM`
(`model_type: rwkv7`). Its parameters are the official ones under other names, with the LoRA matrices
stored as `nn.Linear` weights (transposed), the LoRA biases w0/a0/v0 flat, and layer 0 without the unused
v0/v1/v2. Both directions go through the one table below, so an export and an import cannot disagree.

A directory written here holds config.json (the `RWKV7Config` fields, sizes read from the weights),
generation_config.json, model.safetensors (fla's names and shapes), rwkv_layer0_unused.safetensors (the
official file's layer-0 v0/v1/v2, which fla has no place for: keeps `.pth -> hf -> .pth` bit-identical)
and, for Hugging Face tokenizers, the tokenizer files.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from ..atomic import swap_in_dir
from ..model.base import GROUPNORM_EPS
from ..model.config import _lora_rank
from .official_pth import CheckpointMismatch, detect_version, expected_shapes, infer_config, official_order
from .safetensors_io import load_safetensors, save_safetensors

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_BIN = "pytorch_model.bin"
LAYER0_EXTRA = "rwkv_layer0_unused.safetensors"
LAYER0_UNUSED = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default, used by ln0/ln1/ln2/ln_out (docs/model-spec.md §1.2)


class HFExportWarning(UserWarning):
    """The exported model is not numerically identical in fla (head size other than 64)."""


class HFFormatError(CheckpointMismatch):
    """A directory or config that cannot be converted; the message names the file/key and what to do (a
    CheckpointMismatch, so the entry scripts print it without a traceback)."""


# Per layer: official name after `blocks.{i}.` -> (fla name after `model.layers.{i}.`, how the tensor
# changes on the way to fla). "t": an official [in, out] LoRA matrix is fla's nn.Linear weight [out, in];
# "flat": an official [1, 1, C] vector that fla stores as [C]; "same": identical tensor.
_LAYER_MAP = {
    "ln0.weight": ("pre_norm.weight", "same"), "ln0.bias": ("pre_norm.bias", "same"),
    "ln1.weight": ("attn_norm.weight", "same"), "ln1.bias": ("attn_norm.bias", "same"),
    "ln2.weight": ("ffn_norm.weight", "same"), "ln2.bias": ("ffn_norm.bias", "same"),
    **{f"att.x_{c}": (f"attn.x_{c}", "same") for c in "rwkvag"},
    **{f"att.{c}1": (f"attn.{c}_lora.lora.0.weight", "t") for c in "wavg"},
    **{f"att.{c}2": (f"attn.{c}_lora.lora.2.weight", "t") for c in "wavg"},
    **{f"att.{c}0": (f"attn.{c}_lora.lora.2.bias", "flat") for c in "wav"},
    "att.k_k": ("attn.k_k", "flat"), "att.k_a": ("attn.k_a", "flat"), "att.r_k": ("attn.r_k", "same"),
    "att.receptance.weight": ("attn.r_proj.weight", "same"), "att.key.weight": ("attn.k_proj.weight", "same"),
    "att.value.weight": ("attn.v_proj.weight", "same"), "att.output.weight": ("attn.o_proj.weight", "same"),
    "att.ln_x.weight": ("attn.g_norm.weight", "same"), "att.ln_x.bias": ("attn.g_norm.bias", "same"),
    "ffn.x_k": ("ffn.x_k", "flat"), "ffn.key.weight": ("ffn.key.weight", "same"),
    "ffn.value.weight": ("ffn.value.weight", "same"),
}
_GLOBAL_MAP = {"emb.weight": "model.embeddings.weight", "ln_out.weight": "model.norm.weight",
               "ln_out.bias": "model.norm.bias", "head.weight": "lm_head.weight"}
_LAYER_INV = {hf: (off, kind) for off, (hf, kind) in _LAYER_MAP.items()}
_GLOBAL_INV = {hf: off for off, hf in _GLOBAL_MAP.items()}


def hf_name(key: str) -> tuple[str, str]:
    """(fla name, transform) of one official x070 key; KeyError for names outside the table."""
    if key in _GLOBAL_MAP:
        return _GLOBAL_MAP[key], "same"
    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if not m or m.group(2) not in _LAYER_MAP:
        raise KeyError(key)
    name, kind = _LAYER_MAP[m.group(2)]
    return f"model.layers.{m.group(1)}.{name}", kind


def official_name(key: str) -> tuple[str, str]:
    """(official name, transform from fla) of one fla key; KeyError for names outside the table."""
    if key in _GLOBAL_INV:
        return _GLOBAL_INV[key], "same"
    m = re.fullmatch(r"model\.layers\.(\d+)\.(.+)", key)
    if not m or m.group(2) not in _LAYER_INV:
        raise KeyError(key)
    name, kind = _LAYER_INV[m.group(2)]
    return f"blocks.{m.group(1)}.{name}", kind


def _to_hf(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "t":
        return t.t()
    if kind == "flat":
        return t.reshape(-1)
    return t


def _to_official(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "t":
        return t.t()
    if kind == "flat":
        return t.reshape(1, 1, -1)
    return t


def require_x070(sd: dict, source: str) -> None:
    version = detect_version(sd)
    if version != "x070":
        raise HFFormatError(
            f"{source}: a {version} model. The Hugging Face / fla format covers RWKV-7 (x070) only (fla's "
            "RWKV-6 model has other parameters and math); export it with --format pth or --format safetensors")


def official_to_hf(sd: dict, source: str = "state dict") -> dict:
    """Official x070 tensors (any order) -> fla's names and shapes, in official layer order. Layer 0's
    v0/v1/v2 are left out (fla's layer 0 has no v_lora; docs/model-spec.md §4.4)."""
    require_x070(sd, source)
    out = {}
    for key, t in official_order(sd, source=source).items():
        if key in LAYER0_UNUSED:
            continue
        name, kind = hf_name(key)
        out[name] = _to_hf(t, kind)
    return out


def hf_to_official(hf_sd: dict, cfg, layer0_extra: dict | None = None, source: str = "state dict") -> dict:
    """fla tensors -> official x070 tensors in official order (`cfg`: the RWKVConfig they belong to).
    Layer 0's unused v0/v1/v2 come from `layer0_extra` when given (a directory written by this module),
    else zeros (pip, fla and our model never read them; docs/model-spec.md §1.2)."""
    out, unknown = {}, []
    for key, t in hf_sd.items():
        try:
            name, kind = official_name(key)
        except KeyError:
            unknown.append(key)
            continue
        out[name] = _to_official(t, kind)
    if unknown:
        raise HFFormatError(f"{source}: {len(unknown)} tensor name(s) outside the fla RWKV-7 map: "
                            + ", ".join(unknown[:12]) + (" …" if len(unknown) > 12 else ""))
    extra = dict(layer0_extra or {})
    shapes = expected_shapes(cfg)
    like = next(iter(out.values()), None)
    for key in LAYER0_UNUSED:
        if key in extra:
            out[key] = extra[key]
        elif key not in out and like is not None:
            out[key] = torch.zeros(shapes[key], dtype=like.dtype)
    return official_order(out, cfg, source=source, hint="The directory does not hold a complete fla RWKV-7 "
                          "model.")


# ---- config.json --------------------------------------------------------------------------------------

def hf_config(sd: dict, dtype: torch.dtype, eos_token_id: int = 0, bos_token_id: int | None = None) -> dict:
    """config.json of fla's RWKV7Config, every size read from the official tensors (docs/model-spec.md
    §4.4: the v rank from layer 1). fuse_norm / fuse_cross_entropy stay at fla's defaults."""
    cfg = infer_config(sd)
    # fla derives g_norm's eps as head_dim·norm_eps and uses norm_eps for the LayerNorms too. Head size 64
    # reproduces both official eps (1e-5, ln_x 64e-5; docs/model-spec.md §1.2). Other head sizes keep ln_x
    # exact (its input, the per-head WKV output, can have a small variance, where eps matters) and move
    # the LayerNorm eps instead (their inputs are the residual stream; the effect is tiny, see the test).
    norm_eps = LAYERNORM_EPS if cfg.head_size == 64 else GROUPNORM_EPS / cfg.head_size
    if cfg.head_size != 64:
        warnings.warn(f"head size {cfg.head_size}: fla uses one norm_eps for the LayerNorms and head_dim·norm_eps "
                      f"for ln_x; exported with norm_eps {norm_eps:g} (ln_x eps exact, LayerNorm eps {norm_eps:g} "
                      f"instead of {LAYERNORM_EPS:g}), so fla's logits differ slightly from ours",
                      HFExportWarning, stacklevel=2)
    bos = eos_token_id if bos_token_id is None else bos_token_id
    return {
        "architectures": ["RWKV7ForCausalLM"],
        "model_type": "rwkv7",
        "attn_mode": "chunk",
        "hidden_size": cfg.n_embd,
        "num_hidden_layers": cfg.n_layer,
        "head_dim": cfg.head_size,
        "num_heads": cfg.n_embd // cfg.head_size,
        "hidden_ratio": 4,
        "intermediate_size": cfg.dim_ffn,
        "decay_low_rank_dim": cfg.d_decay_lora,
        "a_low_rank_dim": cfg.d_aaa_lora,
        "v_low_rank_dim": cfg.d_mv_lora,
        "gate_low_rank_dim": cfg.d_gate_lora,
        "hidden_act": "sqrelu",
        "norm_first": True,
        "norm_bias": True,
        "norm_eps": norm_eps,
        "vocab_size": cfg.vocab_size,
        "tie_word_embeddings": False,
        "use_cache": True,
        "bos_token_id": bos,
        "eos_token_id": eos_token_id,
        "pad_token_id": eos_token_id,
        "dtype": str(dtype).removeprefix("torch."),
    }


def _config_error(path, key, msg):
    return HFFormatError(f"{path}: `{key}` {msg}")


def fla_sizes(config: dict, path="config.json") -> dict:
    """The sizes fla builds its RWKV7ForCausalLM with from `config` (its defaults and rank formulas for
    absent or null fields), after checking the structure our model can represent."""
    if config.get("model_type") != "rwkv7":
        raise _config_error(path, "model_type", f"is {config.get('model_type')!r}, not 'rwkv7': this is not an "
                            "fla RWKV-7 model (RWKV-4/5/6 Hugging Face models are not supported)")
    C = int(config.get("hidden_size", 2048))
    L = int(config.get("num_hidden_layers", 24))
    head_dim, num_heads = config.get("head_dim", 64), config.get("num_heads")
    if head_dim is None:
        if num_heads is None:
            raise _config_error(path, "head_dim", "and num_heads are both null")
        head_dim = C // int(num_heads)
    head_dim = int(head_dim)
    checks = {"hidden_act": (config.get("hidden_act", "sqrelu"), "sqrelu"),
              "norm_first": (config.get("norm_first", True), True),
              "norm_bias": (config.get("norm_bias", True), True),
              "tie_word_embeddings": (config.get("tie_word_embeddings", False), False)}
    for key, (have, want) in checks.items():
        if have != want:
            raise _config_error(path, key, f"is {have!r}; the RWKV-7 model has {want!r} (docs/model-spec.md §1.3)")
    value_dim = config.get("value_dim")
    if value_dim is not None and any(int(v) != C for v in (value_dim if isinstance(value_dim, list) else [value_dim])):
        raise _config_error(path, "value_dim", f"is {value_dim}, not hidden_size {C}: a wider value is an fla "
                            "extension without an official counterpart")
    attn = config.get("attn")
    if attn and attn.get("layers"):
        raise _config_error(path, "attn", f"puts softmax attention in layers {attn['layers']}: hybrid models "
                            "have no official RWKV-7 counterpart")
    eps = float(config.get("norm_eps", 1e-5))
    if not math.isclose(head_dim * eps, GROUPNORM_EPS, rel_tol=1e-6):
        raise _config_error(path, "norm_eps", f"= {eps:g} with head_dim {head_dim} gives fla a g_norm (ln_x) eps "
                            f"of {head_dim * eps:g}; the official model's is {GROUPNORM_EPS:g} (docs/model-spec.md "
                            "§1.2), so this model cannot be represented exactly")
    if not math.isclose(eps, LAYERNORM_EPS, rel_tol=1e-6):
        warnings.warn(f"{path}: norm_eps {eps:g} (head_dim {head_dim}): fla's LayerNorm eps differs from the "
                      f"official {LAYERNORM_EPS:g}; imported weights give slightly different logits",
                      HFExportWarning, stacklevel=2)
    ffn = config.get("intermediate_size")
    if ffn is None:
        ffn = 32 * -(-int(C * (config.get("hidden_ratio") or 4)) // 32)
    factor = head_dim / 64
    s = math.sqrt(C)
    ranks = {"decay_low_rank_dim": (64, _lora_rank(2.5 * s * factor)),
             "a_low_rank_dim": (64, _lora_rank(2.5 * s * factor)),
             "v_low_rank_dim": (16, _lora_rank(1.7 * s * factor)),
             "gate_low_rank_dim": (128, _lora_rank(5 * s))}
    # absent: RWKV7Config's default; explicit null: the attention layer's formula (fla 0.6.0)
    got = {k: int(config[k]) if config.get(k) is not None else (absent if k not in config else formula)
           for k, (absent, formula) in ranks.items()}
    return dict(n_layer=L, n_embd=C, vocab_size=int(config.get("vocab_size", 32000)), head_size=head_dim,
                dim_ffn=int(ffn), d_decay_lora=got["decay_low_rank_dim"], d_aaa_lora=got["a_low_rank_dim"],
                d_mv_lora=got["v_low_rank_dim"], d_gate_lora=got["gate_low_rank_dim"])


def expected_hf_shapes(cfg) -> dict:
    """fla names and shapes of the model `cfg` (an RWKVConfig), computed without allocating."""
    meta = {k: torch.empty(s, device="meta") for k, s in expected_shapes(cfg).items()}
    sd = {}
    for key, t in meta.items():
        if key in LAYER0_UNUSED:
            continue
        name, kind = hf_name(key)
        sd[name] = tuple(_to_hf(t, kind).shape)
    return sd


class HFKeyMismatch(HFFormatError):
    """Two sets of fla tensor names/shapes differ; the message lists every difference."""


def check_hf_keys(have: dict, want: dict, source: str, hint: str) -> None:
    """Compare {name: shape} maps and raise one error that lists the missing, unexpected and mis-shaped
    names (a newer fla renaming a parameter shows up here, name by name)."""
    have = {k: tuple(v) for k, v in have.items()}
    want = {k: tuple(v) for k, v in want.items()}
    missing = [k for k in want if k not in have]
    unexpected = [k for k in have if k not in want]
    misshaped = [f"{k}: {have[k]} vs {want[k]}" for k in want if k in have and have[k] != want[k]]
    if not (missing or unexpected or misshaped):
        return

    def fmt(title, items):
        if not items:
            return ""
        more = f" … and {len(items) - 16} more" if len(items) > 16 else ""
        return f"\n  {title} ({len(items)}): " + ", ".join(items[:16]) + more

    raise HFKeyMismatch(f"{source}: the fla RWKV-7 tensor names differ:" + fmt("missing", missing)
                        + fmt("unexpected", unexpected) + fmt("mis-shaped", misshaped) + "\n" + hint)


# ---- reading a directory --------------------------------------------------------------------------------

def is_hf_dir(path) -> bool:
    """A Hugging Face model directory: config.json, and not a DeepSpeed checkpoint (which has `latest`)."""
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and not (path / "latest").is_file()


def hub_cache_dir(name: str) -> Path | None:
    """The local snapshot of hub id `name` (owner/model) in the Hugging Face cache; None when it is not an
    id or not cached. Nothing is downloaded."""
    if not re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", name):
        return None
    try:
        from huggingface_hub import snapshot_download

        found = Path(snapshot_download(repo_id=name, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached, or not a valid id: the caller reports the path
        return None
    return found if is_hf_dir(found) else None


def _read_weights(path: Path) -> dict:
    if (path / WEIGHTS).is_file():
        return load_safetensors(path / WEIGHTS)
    if (path / WEIGHTS_INDEX).is_file():  # sharded: the index maps each tensor to its shard
        index = json.loads((path / WEIGHTS_INDEX).read_text())
        sd = {}
        for shard in sorted(set(index.get("weight_map", {}).values())):
            sd.update(load_safetensors(path / shard))
        return sd
    if (path / WEIGHTS_BIN).is_file():
        return torch.load(path / WEIGHTS_BIN, map_location="cpu", weights_only=True)
    raise HFFormatError(f"{path}: no {WEIGHTS}, {WEIGHTS_INDEX} or {WEIGHTS_BIN}; is the download complete?")


def _migrate_x_x(sd: dict) -> dict:
    """Early fla checkpoints keep the six token-shift mixes in one `attn.x_x` [6, C] (fla converts them
    on load the same way): split them into x_r, x_w, x_k, x_v, x_a, x_g [1, 1, C]."""
    out = {}
    for key, t in sd.items():
        if key.endswith(".attn.x_x"):
            base = key[: -len("x_x")]
            for i, c in enumerate("rwkvag"):
                out[f"{base}x_{c}"] = t[i].reshape(1, 1, -1)
        else:
            out[key] = t
    return out


def load_hf(path) -> dict:
    """Official x070 tensors (file dtype, official order) of an fla RWKV-7 directory."""
    path = Path(path)
    cfg_path = path / "config.json"
    try:
        config = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise HFFormatError(f"{cfg_path}: cannot be read as JSON ({e})") from e
    from ..model.config import RWKVConfig

    cfg = RWKVConfig(version="x070", **fla_sizes(config, cfg_path))
    sd = _migrate_x_x(_read_weights(path))
    check_hf_keys({k: v.shape for k, v in sd.items()}, expected_hf_shapes(cfg), source=str(path),
                  hint=f"The weights do not fit {cfg_path} (fla RWKV7ForCausalLM, docs/model-spec.md §4.4); "
                       "load the directory with fla once and save_pretrained it, or fix config.json.")
    extra = load_safetensors(path / LAYER0_EXTRA) if (path / LAYER0_EXTRA).is_file() else None
    return hf_to_official(sd, cfg, extra, source=str(path))


# ---- writing a directory --------------------------------------------------------------------------------

def save_tokenizer(tokenizer: str, out: Path) -> list[str]:
    """Save a Hugging Face tokenizer (a tokenizer.json file, `neox`, or a tokenizer directory) into `out`
    with transformers' save_pretrained; `world` and `bytes` have no HF tokenizer: nothing is written."""
    if tokenizer in ("world", "bytes"):
        return []
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    from ..data.tokenizers import HFDirTokenizer, JsonTokenizer, get_tokenizer

    tok = get_tokenizer(tokenizer)  # resolves `neox` and checks the path, with the data pipeline's messages
    if isinstance(tok, JsonTokenizer):
        hf_tok = PreTrainedTokenizerFast(tokenizer_file=tok.path)
    elif isinstance(tok, HFDirTokenizer):
        hf_tok = AutoTokenizer.from_pretrained(tok.path, local_files_only=True)
    else:
        return []
    before = set(os.listdir(out))
    hf_tok.save_pretrained(str(out))
    return sorted(set(os.listdir(out)) - before)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` directory with renames (never a half-written `out`)."""
    if out.exists():
        if not out.is_dir():
            raise HFFormatError(f"{out}: exists and is not a directory; choose another output path")
        if any(out.iterdir()) and not (out / "config.json").is_file():
            raise HFFormatError(f"{out}: a non-empty directory that is not a model export; refusing to "
                                "replace it, choose another output path")
    swap_in_dir(tmp, out, old=out.with_name(f".{out.name}.old"))


def save_hf(sd: dict, out, dtype: torch.dtype = torch.bfloat16, tokenizer: str | None = None,
            eos_token_id: int = 0, source: str = "state dict") -> dict:
    """Write an fla RWKV-7 directory from official x070 tensors; returns the fla tensors written."""
    out = Path(out)
    require_x070(sd, source)
    official = official_order(sd, source=source)
    config = hf_config(official, dtype, eos_token_id)
    hf_sd = {k: v.detach().to("cpu", dtype) for k, v in official_to_hf(official, source).items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        save_safetensors(hf_sd, tmp / WEIGHTS)
        save_safetensors({k: official[k].detach().to("cpu", dtype) for k in LAYER0_UNUSED}, tmp / LAYER0_EXTRA)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": eos_token_id, "pad_token_id": eos_token_id}
        (tmp / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
        if tokenizer:
            save_tokenizer(tokenizer, tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return hf_sd


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m
