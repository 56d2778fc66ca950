"""Parameter groups, optimizer choice and the LR schedule of the official trainer (model-spec §1.6)."""

from __future__ import annotations

import math

import torch


def param_groups(model, weight_decay: float, layerwise_lr: bool = False) -> list[dict]:
    """Official groups: att.w0 (and v5/v6 time_decay) at 2× lr without decay; weight decay only on the
    large `.weight` matrices; everything else 1× without decay. `layerwise_lr` adds the RWKV-v5 folder's
    scheme (time_first 3×, time_faaaa/time_maa 1×; spec §1.6). Frozen parameters are left out.
    """
    buckets: dict[tuple[float, float], list] = {}
    names: dict[tuple[float, float], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale, wd = 1.0, 0.0
        if "att.w0" in n or (layerwise_lr and ("time_decay" in n or "time_daaaa" in n)):
            scale = 2.0
        elif layerwise_lr and "time_first" in n:
            scale = 3.0
        elif len(p.squeeze().shape) >= 2 and ".weight" in n and weight_decay > 0:
            wd = weight_decay
        buckets.setdefault((scale, wd), []).append(p)
        names.setdefault((scale, wd), []).append(n)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale, "names": names[(scale, wd)]}
            for (scale, wd), ps in sorted(buckets.items())]


def build_optimizer(groups, lr: float, betas, eps: float, offload: bool = False, fused: bool = True):
    """Torch AdamW (decoupled decay, bias correction) by default; DeepSpeedCPUAdam when ZeRO offloads the
    optimizer (DeepSpeed refuses a client torch optimizer with offload, platform notes). `fused` picks the
    single-kernel AdamW (Lightning's mixed-precision plugin refuses to clip gradients for it)."""
    clean = [{k: v for k, v in g.items() if k != "names"} for g in groups]
    if offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(clean, lr=lr, betas=betas, eps=eps, adamw_mode=True, bias_correction=True)
    kw = {"foreach": True}
    if fused and all(p.device.type in ("cpu", "cuda") for g in clean for p in g["params"]):
        kw = {"fused": True}  # one kernel over all tensors instead of a per-parameter loop
    return torch.optim.AdamW(clean, lr=lr, betas=betas, eps=eps, **kw)


def lr_at(step: int, tokens: float, *, lr_init: float, lr_final: float, warmup_steps: int, schedule: str,
          total_steps: int | None = None, total_tokens: float | None = None,
          time_progress: float | None = None) -> float:
    """Warm-up then decay from lr_init to lr_final (spec §1.6).

    Progress runs over `total_tokens` when a token budget is set (like my_exit_tokens), else over
    `total_steps`, measured after the warm-up. The warm-up multiplies by 0.01 + 0.99·step/warmup_steps.
    `time_progress` (elapsed / trainer.max_time, when the schedule is also bound to the time budget) moves
    progress forward when the time budget would end the run before the steps or tokens do.
    """
    if total_tokens:
        progress = tokens / total_tokens
    elif total_steps and total_steps > warmup_steps:
        progress = (step - warmup_steps) / (total_steps - warmup_steps)
    else:
        progress = 0.0
    if time_progress is not None:
        progress = max(progress, time_progress)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "cosine":
        f = lr_final / lr_init if lr_init else 1.0
        lr = lr_init * ((0.5 + f / 2) + (0.5 - f / 2) * math.cos(math.pi * progress))
    elif schedule == "linear":
        lr = lr_init + (lr_final - lr_init) * progress
    elif schedule == "constant":
        lr = lr_init
    else:
        raise ValueError(f"model.lr_schedule must be cosine, linear or constant, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        lr *= 0.01 + 0.99 * step / warmup_steps
    return lr
