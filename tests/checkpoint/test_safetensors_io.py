"""`--format safetensors` (docs/model-spec.md §4.3): official key names, shapes and order in fp16/bf16,
read back exactly; and official-name .safetensors files as inputs to load_state_dict / export."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rwkv.checkpoint import export_checkpoint
from rwkv.checkpoint.export import ExportError
from rwkv.model import load_state_dict, save_pth
from tests.support.models import random_model


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("st")
    model = random_model("x070", n_layer=2, n_embd=64, vocab_size=320, head_size=16, seed=7)
    save_pth(model, tmp / "m.pth", dtype="fp32")
    return model.state_dict(), tmp / "m.pth"


@pytest.mark.parametrize("dtype, torch_dtype", [(None, torch.float16), ("fp16", torch.float16),
                                                ("bf16", torch.bfloat16)])
def test_official_names_shapes_and_dtype(src, tmp_path, dtype, torch_dtype):
    sd, path = src
    out = tmp_path / "m.safetensors"
    export_checkpoint(path, out, dtype, fmt="safetensors")
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
        got = {k: f.get_tensor(k) for k in keys}
        assert f.metadata() == {"format": "pt"}
    assert sorted(keys) == sorted(sd)  # the file's header order is safetensors' own, not ours
    for k, v in sd.items():
        assert got[k].dtype == torch_dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v.to(torch_dtype)), k  # one rounding, nothing else


def test_reads_back_through_load_state_dict_and_exports_to_pth(src, tmp_path):
    sd, path = src
    export_checkpoint(path, tmp_path / "m.safetensors", "bf16", fmt="safetensors")
    back = load_state_dict(tmp_path / "m.safetensors")
    assert all(torch.equal(back[k], v.to(torch.bfloat16)) for k, v in sd.items())
    pth = export_checkpoint(tmp_path / "m.safetensors", tmp_path / "again.pth", "fp32")
    assert list(pth) == list(sd)  # official order restored
    assert all(torch.equal(pth[k], v.to(torch.bfloat16).float()) for k, v in sd.items())


def test_x060_exports_too(tmp_path):
    model = random_model("x060", n_layer=2, n_embd=64, vocab_size=320, head_size=32)
    save_pth(model, tmp_path / "m.pth", dtype="fp32")
    export_checkpoint(tmp_path / "m.pth", tmp_path / "m.safetensors", fmt="safetensors")
    back = load_state_dict(tmp_path / "m.safetensors")
    assert all(torch.equal(back[k], v.to(torch.float16)) for k, v in model.state_dict().items())


def test_truncated_file_is_named(src, tmp_path):
    sd, path = src
    export_checkpoint(path, tmp_path / "m.safetensors", fmt="safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ExportError, match=r"cut.safetensors: cannot be read as a safetensors file"):
        export_checkpoint(tmp_path / "cut.safetensors", tmp_path / "x.pth")
    with pytest.raises(ValueError, match=r"cut.safetensors: cannot be read as a safetensors file"):
        load_state_dict(tmp_path / "cut.safetensors")
    assert not (tmp_path / "x.pth").exists()
