"""RWKV-7 "Goose" (x070) as a plain nn.Module (docs/model-spec.md §1), and the skeleton x060/x052 reuse.

Parameter names, shapes and registration order are exactly the official `.pth` keys (docs/model-spec.md §1.2), so a
state_dict is a checkpoint. `forward(idx, state=None, reset=None) -> (logits, state)` works for any T;
the state is a value (see rwkv.model.state) and is never modified in place.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import wkv7
from ..ops.keys import wkv7_keys
from ..ops.mix import token_shift_mix
from .config import RWKVConfig
from .state import wkv_from_initial

# λ = −e^{−1/2}·σ(ω): the decay clamp of the current official kernel, docs/model-spec.md §1.3.
NEG_EXP_HALF = -0.6065306597126334
GROUPNORM_EPS = 64e-5  # ln_x eps = 1e-5 · head_size_divisor² (docs/model-spec.md §1.2 / §1.4)


def last_token(x: torch.Tensor) -> torch.Tensor:
    """The carried x_prev: a copy, not a view, so a stored state never pins the segment's activations."""
    return x[:, -1].clone()


class _ReluSquare(torch.autograd.Function):
    """relu(x)² with one saved tensor and one fused backward, d/dx = 2·relu(x). Autograd's composition
    allocates four [B, T, dim_ffn] temporaries in backward (square's and relu's gradients, a scaled copy);
    this is one (docs/benchmarks.md "Training step")."""

    @staticmethod
    def forward(ctx, x):
        r = torch.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx, g):
        (r,) = ctx.saved_tensors
        return r.mul(2).mul_(g)


def relu_square(x: torch.Tensor) -> torch.Tensor:
    """The channel-mix activation relu(x)² (docs/model-spec.md §1.3, §2.1)."""
    return _ReluSquare.apply(x)


class TimeMix(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        C, H, N = cfg.n_embd, cfg.n_head, cfg.head_size
        vec = lambda: nn.Parameter(torch.empty(1, 1, C))
        lora = lambda d_in, d_out: nn.Parameter(torch.empty(d_in, d_out))
        # registration order = official key order (docs/model-spec.md §1.2)
        self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g = (vec() for _ in range(6))
        self.w1, self.w2, self.w0 = lora(C, cfg.d_decay_lora), lora(cfg.d_decay_lora, C), vec()
        self.a1, self.a2, self.a0 = lora(C, cfg.d_aaa_lora), lora(cfg.d_aaa_lora, C), vec()
        self.v1, self.v2, self.v0 = lora(C, cfg.d_mv_lora), lora(cfg.d_mv_lora, C), vec()
        self.g1, self.g2 = lora(C, cfg.d_gate_lora), lora(cfg.d_gate_lora, C)
        self.k_k, self.k_a = vec(), vec()
        self.r_k = nn.Parameter(torch.empty(H, N))
        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUPNORM_EPS)

    def forward(self, x, x_prev, S, v_first, reset=None):
        B, T, C = x.shape
        H, N = self.r_k.shape
        # x + (z_{t−1} − x) ⊙ x_*, docs/model-spec.md §1.3 (one fused pass on CPU, rwkv/ops/mix.py)
        xr, xw, xk, xv, xa, xg = token_shift_mix(
            x, x_prev, reset, (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g))

        r = self.receptance(xr)
        # log-decay in fp32 even under bf16 (the official kernel also applies σ in fp32), docs/model-spec.md §1.3
        w = NEG_EXP_HALF * torch.sigmoid((self.w0 + torch.tanh(xw @ self.w1) @ self.w2).float())
        k = self.key(xk)
        v = self.value(xv)
        if self.layer_id == 0:
            v_first = v
        else:  # value residual towards layer 0's value (no tanh), docs/model-spec.md §1.3
            v = v + (v_first - v) * torch.sigmoid(self.v0 + (xv @ self.v1) @ self.v2)
        a = torch.sigmoid(self.a0 + (xa @ self.a1) @ self.a2)
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        # kk = normalize(k ⊙ k_k) per head, k ⊙ (1 + (a − 1) ⊙ k_a), and the kernel's a = −kk, b = kk ⊙ a
        # (docs/model-spec.md §1.3; one fused pass on CPU, rwkv/ops/keys.py)
        k, a_in, b_in = wkv7_keys(k, a, self.k_k, self.k_a, H)

        shape = (B, T, H, N)
        # a learned initial state (state tuning, rwkv/peft) is stored [H, value, key], this kernel's layout
        y, S = wkv_from_initial(wkv7, (r.view(shape), w.view(shape), k.view(shape), v.view(shape),
                                       a_in.view(shape), b_in.view(shape)), S, reset,
                                getattr(self, "time_state", None))
        y = self.ln_x(y.reshape(B * T, C)).view(B, T, C)
        bonus = (r.view(shape) * k.view(shape) * self.r_k).sum(-1, keepdim=True) * v.view(shape)
        out = self.output((y + bonus.view(B, T, C)) * g)
        return out, last_token(x), S, v_first


class ChannelMix(nn.Module):
    def __init__(self, cfg: RWKVConfig, layer_id: int):
        super().__init__()
        C = cfg.n_embd
        self.x_k = nn.Parameter(torch.empty(1, 1, C))
        self.key = nn.Linear(C, cfg.dim_ffn, bias=False)
        self.value = nn.Linear(cfg.dim_ffn, C, bias=False)

    def forward(self, x, x_prev, reset=None):
        (xk,) = token_shift_mix(x, x_prev, reset, (self.x_k,))
        return self.value(relu_square(self.key(xk))), last_token(x)


class Block(nn.Module):
    """Pre-LN residual block shared by x070/x060/x052 (docs/model-spec.md §1.3, §2): ln0 on layer 0, then
    x + att(ln1(x)), x + ffn(ln2(x)). The time-mix class decides what `v_first` means (x070's value
    residual); x060/x052 time-mixes pass it through untouched."""

    def __init__(self, cfg: RWKVConfig, layer_id: int, time_mix=None, channel_mix=None):
        super().__init__()
        self.layer_id = layer_id
        C = cfg.n_embd
        # registration order = official key order: ln1, ln2, (ln0), att, ffn (docs/model-spec.md §1.2)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # applied to the embedding (docs/model-spec.md §1.3)
        self.att = (time_mix or TimeMix)(cfg, layer_id)
        self.ffn = (channel_mix or ChannelMix)(cfg, layer_id)

    def forward(self, x, att_x_prev, S, ffn_x_prev, v_first, reset=None):
        if self.layer_id == 0:
            x = self.ln0(x)
        dx, att_x_prev, S, v_first = self.att(self.ln1(x), att_x_prev, S, v_first, reset)
        x = x + dx
        dx, ffn_x_prev = self.ffn(self.ln2(x), ffn_x_prev, reset)
        return x + dx, att_x_prev, S, ffn_x_prev, v_first


class RWKVModel(nn.Module):
    """Language-model skeleton shared by every version: emb, blocks, ln_out, head (docs/model-spec.md §1.2, §2).

    Subclasses set `version`, `time_mix` and `channel_mix`. `grad_cp` recomputes each block in
    backward (activation memory of one block). The state layout is described in rwkv.model.state.
    """

    version = ""
    time_mix: type = None
    channel_mix: type = None

    def __init__(self, cfg: RWKVConfig, grad_cp: bool = False):
        super().__init__()
        if cfg.version != self.version:
            raise ValueError(f"{type(self).__name__} needs version {self.version}, got {cfg.version}")
        self.cfg = cfg
        self.grad_cp = grad_cp
        self.emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg, i, self.time_mix, self.channel_mix)
                                    for i in range(cfg.n_layer))
        self.ln_out = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx, state=None, reset=None, return_hidden: bool = False):
        """idx [B,T] -> (logits [B,T,V] or hidden [B,T,C] if return_hidden, new state)."""
        x = self.emb(idx)
        B = idx.shape[0]
        v_first = None
        new_state = []
        for i, block in enumerate(self.blocks):
            if state is None:
                zeros = x.new_zeros(B, self.cfg.n_embd)
                att_prev, S, ffn_prev = zeros, None, zeros
            else:
                att_prev, S, ffn_prev = state[i]
            args = (x, att_prev, S, ffn_prev, v_first, reset)
            if self.grad_cp and torch.is_grad_enabled():
                x, att_prev, S, ffn_prev, v_first = checkpoint(block, *args, use_reentrant=False)
            else:
                x, att_prev, S, ffn_prev, v_first = block(*args)
            new_state.append((att_prev, S, ffn_prev))
        x = self.ln_out(x)
        return (x if return_hidden else self.head(x)), tuple(new_state)


class RWKV7(RWKVModel):
    """x070 language model."""

    version = "x070"
    time_mix = TimeMix
    channel_mix = ChannelMix

    def __init__(self, cfg: RWKVConfig, grad_cp: bool = False):
        super().__init__(cfg, grad_cp)
        # Layer 0 stores v0/v1/v2 like the official files (docs/model-spec.md §1.2) but never uses them: freeze them so
        # DDP does not wait for gradients that never come and optimizers skip them.
        for name in ("v0", "v1", "v2"):
            getattr(self.blocks[0].att, name).requires_grad_(False)
