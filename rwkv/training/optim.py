"""Parameter groups, optimizer choice and the LR schedule of the official trainer (docs/model-spec.md §1.6)."""

from __future__ import annotations

import math

import torch


def lr_scale_and_decay(name: str, p, weight_decay: float, layerwise_lr: bool) -> tuple[float, float]:
    """(lr multiplier, weight decay) of one parameter, by the official rules (docs/model-spec.md §1.6).

    The rules are tried in the official order, first match wins: with `layerwise_lr` the low-rank
    `_w1`/`_w2` matrices come before the `time_decay` rule (so `time_decay_w1` is 1×, not 2×),
    `time_mix*`/`time_maa*` and `time_faaaa` are 1×, `time_decay`/`time_daaaa` 2×, `time_first` 3×.
    `att.w0` (x070's decay bias) is 2× in every mode. Weight decay goes only to ≥ 2-D `.weight` tensors.
    """
    if layerwise_lr:
        if "_w1" in name or "_w2" in name:
            return 1.0, 0.0
        if "time_mix" in name or "time_maa" in name:
            return 1.0, 0.0
        if "time_decay" in name or "time_daaaa" in name or "att.w0" in name:
            return 2.0, 0.0
        if "time_faaaa" in name:
            return 1.0, 0.0
        if "time_first" in name:
            return 3.0, 0.0
    elif "att.w0" in name:
        return 2.0, 0.0
    if len(p.squeeze().shape) >= 2 and ".weight" in name and weight_decay > 0:
        return 1.0, weight_decay
    return 1.0, 0.0


def param_groups(model, weight_decay: float, layerwise_lr: bool = False) -> list[dict]:
    """The official optimizer groups (`lr_scale_and_decay`), one per (lr scale, weight decay) pair, with
    the parameter names kept for logs and tests. Frozen parameters are left out."""
    buckets: dict[tuple[float, float], list] = {}
    names: dict[tuple[float, float], list] = {}
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = lr_scale_and_decay(n, p, weight_decay, layerwise_lr)
        buckets.setdefault(key, []).append(p)
        names.setdefault(key, []).append(n)
    return [{"params": ps, "weight_decay": wd, "lr_scale": scale, "names": names[(scale, wd)]}
            for (scale, wd), ps in sorted(buckets.items())]


def build_optimizer(groups, lr: float, betas, eps: float, offload: bool = False, fused: bool = True):
    """Torch AdamW (decoupled decay, bias correction) by default; DeepSpeedCPUAdam when ZeRO offloads the
    optimizer (DeepSpeed refuses a client torch optimizer when the optimizer is offloaded). `fused` picks the
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
          time_progress: float | None = None, warmup_tokens: float | None = None) -> float:
    """Warm-up then decay from lr_init to lr_final (docs/model-spec.md §1.6).

    Progress runs over `total_tokens` when a token budget is set (like my_exit_tokens), else over
    `total_steps`, and starts after the warm-up in both: the official token progress is
    (tokens − warm-up tokens)/(budget − warm-up tokens), where the warm-up tokens are warmup_steps·ctx·bsz.
    Our steps carry varying token counts, so `warmup_tokens` is what the warm-up steps really consumed
    (recorded by the trainer); without it, the mean tokens per step so far stands in. The warm-up
    multiplies by 0.01 + 0.99·step/warmup_steps. `time_progress` (elapsed / trainer.max_time, when the
    schedule is also bound to the time budget) moves progress forward when the time budget would end the
    run before the steps or tokens do.
    """
    if total_tokens:
        if step < warmup_steps:
            progress = 0.0  # the official formula is negative here, then clamped
        else:
            if warmup_tokens is None:
                warmup_tokens = warmup_steps * tokens / step if step > 0 else 0.0
            progress = (tokens - warmup_tokens) / max(total_tokens - warmup_tokens, 1.0)
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
        raise ValueError(f"model.optimizer.lr_schedule must be cosine, linear or constant, got {schedule!r}")
    if warmup_steps > 0 and step < warmup_steps:
        lr *= 0.01 + 0.99 * step / warmup_steps
    return lr
