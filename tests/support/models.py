"""Small models with perturbed weights for tests: the official init zeroes several matrices (output,
ffn.value, LoRA down-projections), which would hide bugs in the paths they gate."""

import torch

from rwkv.model import RWKVConfig, build_model


@torch.no_grad()
def perturb_(model, seed: int = 0, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if p.dim() == 2 and "r_k" not in name and "time_faaaa" not in name and "time_decay" not in name:
            noise = noise * (0.5 / p.shape[-1] ** 0.5 if name.endswith(".weight") else 0.1)
        else:
            noise = noise * 0.1
        p.add_((noise * scale).to(p.dtype))
    return model


def random_model(version="x070", n_layer=2, n_embd=128, vocab_size=1000, head_size=64, seed=0,
                 dtype=torch.float32, **kw):
    cfg = RWKVConfig(version=version, n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size,
                     head_size=head_size, **kw)
    torch.manual_seed(seed)
    model = build_model(cfg, init=True)
    perturb_(model, seed)
    return model.to(dtype).eval()
