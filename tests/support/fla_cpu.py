"""fla's real RWKV7ForCausalLM on CPU (notes: Triton has no CPU backend).

`cpu_fla()` patches the Triton-only helpers that fla's RWKV-7 layer and model call with plain PyTorch:
fla's own references for the token shift, the six-way addcmul, the k update and the output gate /
correction, and our reference WKV-7 for `chunk_rwkv7` / `fused_mul_recurrent_rwkv7` (state transposed:
fla keeps [B, H, K, V], we keep [B, H, V, K]). Everything else (module tree, names, parameter shapes,
LoRA, norms, value residual, loss) is fla's unchanged code. Load models with `fuse_norm=False,
fuse_cross_entropy=False`: the fused norms and cross-entropy are Triton kernels too.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from rwkv.ops.v7.reference import wkv7_reference


def _token_shift(x, cu_seqlens=None, cache=None, output_cache=False, chunk_indices=None):
    """fla's token_shift contract (delta = previous token − x; cache [B, D] = the last token) in PyTorch;
    the no-cache case is fla's own token_shift_ref."""
    from fla.modules.token_shift import token_shift_ref

    if cu_seqlens is not None:
        raise NotImplementedError("packed sequences (cu_seqlens) are not needed by these tests")
    if cache is None:
        delta = token_shift_ref(x)
    else:
        prev = torch.cat([cache.view(x.shape[0], 1, -1).to(x.dtype), x[:, :-1]], dim=1)
        delta = prev - x
    return (delta, x[:, -1].clone()) if output_cache else delta


def _wkv(r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens):
    if cu_seqlens is not None:
        raise NotImplementedError("packed sequences (cu_seqlens) are not needed by these tests")
    if scale != 1.0:
        raise NotImplementedError(f"fla's RWKV-7 layer passes scale=1, got {scale}")
    s0 = None if initial_state is None else initial_state.transpose(-1, -2)
    o, s = wkv7_reference(r, w, k, v, a, b, state=s0)
    return o.to(r.dtype), (s.transpose(-1, -2).contiguous() if output_final_state else None)


def _chunk_rwkv7(r, w, k, v, a, b, scale=1.0, initial_state=None, output_final_state=False, cu_seqlens=None,
                 **kw):
    # fla trains with safe_gate/lower_bound (a clamp of the same λ = −e^{−1/2}·σ range) and chunking: exact
    # recurrence here (docs/model-spec.md §3.3)
    return _wkv(r, w, k, v, a, b, scale, initial_state, output_final_state, cu_seqlens)


def _fused_mul_recurrent_rwkv7(r, w, k, v, kk, a, scale=1.0, initial_state=None, output_final_state=False,
                               cu_seqlens=None, **kw):
    # this op receives kk and a and forms the kernel's a = −kk, b = kk·a itself (docs/model-spec.md §3.3)
    return _wkv(r, w, k, v, -kk, kk * a, scale, initial_state, output_final_state, cu_seqlens)


def _k_update(k, a, ka, cu_seqlens=None, cu_seqlens_cpu=None):
    from fla.ops.rwkv7.fused_k_update import k_update_ref

    return k_update_ref(k, a, ka)


@contextlib.contextmanager
def cpu_fla():
    """Within the block, fla's RWKV-7 classes run on CPU; yields the fla.models.rwkv7 module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fla warns that Triton falls back to CPU, and about its RWKV-7 port
        import fla.layers.rwkv7 as layer
        import fla.models.rwkv7 as models
        import fla.models.rwkv7.modeling_rwkv7 as modeling
        from fla.ops.rwkv7.fused_addcmul import torch_addcmul_rwkv7
        from fla.ops.rwkv7.gate_output_correction import gate_output_correction_ref

    patches = [(layer, "token_shift", _token_shift), (modeling, "token_shift", _token_shift),
               (layer, "fused_addcmul_rwkv7", torch_addcmul_rwkv7), (layer, "fused_k_rwkv7", _k_update),
               (layer, "gate_output_correction", gate_output_correction_ref),
               (layer, "chunk_rwkv7", _chunk_rwkv7),
               (layer, "fused_mul_recurrent_rwkv7", _fused_mul_recurrent_rwkv7)]
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches]
    dynamo_was = torch._dynamo.config.disable
    try:
        for mod, name, fn in patches:
            setattr(mod, name, fn)
        # fla's squared-ReLU is @torch.compile'd: run it eagerly (the same code) instead of paying ~20 s of
        # inductor compilation on a 2-core machine
        torch._dynamo.config.disable = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield models
    finally:
        torch._dynamo.config.disable = dynamo_was
        for mod, name, fn in saved:
            setattr(mod, name, fn)
