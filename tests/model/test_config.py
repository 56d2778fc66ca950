"""Model configuration (rwkv/model/config.py): the sizes an unset field takes per version
(docs/model-spec.md §1.1, §2)."""

import pytest

from rwkv.model import RWKVConfig


@pytest.mark.parametrize("C,ranks", [(1024, (64, 64, 64, 160)), (2048, (128, 128, 64, 224)),
                                     (2560, (128, 128, 96, 256))])
def test_lora_ranks_current_formula(C, ranks):
    cfg = RWKVConfig(n_layer=1, n_embd=C, vocab_size=16)
    assert (cfg.d_decay_lora, cfg.d_aaa_lora, cfg.d_mv_lora, cfg.d_gate_lora) == ranks


@pytest.mark.parametrize("C,F", [(2048, 7168), (2560, 8960), (4096, 14336)])
def test_default_dim_ffn(C, F):
    assert RWKVConfig(version="x060", n_layer=1, n_embd=C, vocab_size=16).dim_ffn == F
