"""The skeleton every RWKV version shares: the pre-LN residual block, the language model around it (emb,
blocks, ln_out, head, grad_cp, the state carried per layer), and small shared pieces. x070, x060 and x052
(v7.py, v6.py, v5.py) supply their own time-mix and channel-mix modules (docs/model-spec.md §1.2, §2).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import RWKVConfig

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


class Block(nn.Module):
    """Pre-LN residual block shared by x070/x060/x052 (docs/model-spec.md §1.3, §2): ln0 on layer 0, then
    x + att(ln1(x)), x + ffn(ln2(x)). The time-mix class decides what `v_first` means (x070's value
    residual); x060/x052 time-mixes pass it through untouched."""

    def __init__(self, cfg: RWKVConfig, layer_id: int, time_mix: type, channel_mix: type):
        super().__init__()
        self.layer_id = layer_id
        C = cfg.n_embd
        # registration order = official key order: ln1, ln2, (ln0), att, ffn (docs/model-spec.md §1.2)
        self.ln1 = nn.LayerNorm(C)
        self.ln2 = nn.LayerNorm(C)
        if layer_id == 0:
            self.ln0 = nn.LayerNorm(C)  # applied to the embedding (docs/model-spec.md §1.3)
        self.att = time_mix(cfg, layer_id)
        self.ffn = channel_mix(cfg, layer_id)

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
