"""Runs PyPI's `rwkv` inference package on a .pth, in a subprocess started by tests/support/pip_rwkv.py.

It is launched with `python -I` from a temporary cwd, so neither the repo root nor PYTHONPATH is on sys.path,
and puts the oracle folder (its third argument, where `make setup` installed PyPI's `rwkv`) first: a path
entry wins over the finder of our editable install. tests/support/pip_rwkv.py asserts that the imported
`rwkv` is the pip one. Input and output are torch files:
  request: {model (path without .pth), version, strategy, tokens (list[int]), state_in (list or None)}
  result:  {seq_logits [T,V], seq_state, tok_logits [T,V], tok_state, cont_logits, cont_state, rwkv_file}
"""

import os
import sys

import torch


def main(req_path: str, out_path: str, oracle: str) -> None:
    if not os.path.isdir(oracle):
        sys.exit(f"PyPI's rwkv is not installed in {oracle}: run `make setup`")
    sys.path.insert(0, oracle)
    req = torch.load(req_path, weights_only=False)
    if req["version"] == "x070":
        os.environ["RWKV_V7_ON"] = "1"  # must be set before importing rwkv.model (docs/model-spec.md §4.2)
    os.environ.setdefault("RWKV_JIT_ON", "1")
    os.environ["RWKV_CUDA_ON"] = "0"
    import rwkv
    from rwkv.model import RWKV

    model = RWKV(model=req["model"], strategy=req["strategy"])
    tokens = req["tokens"]
    clone = lambda st: [t.clone() for t in st]
    out = {"rwkv_file": rwkv.__file__}
    logits, state = model.forward(tokens, None, full_output=True)
    out["seq_logits"], out["seq_state"] = logits.float().clone(), clone(state)
    state, rows = None, []
    for tok in tokens:
        logits, state = model.forward([tok], state)
        rows.append(logits.float().clone())
    out["tok_logits"], out["tok_state"] = torch.stack(rows), clone(state)
    if req.get("state_in") is not None:
        logits, state = model.forward(tokens, clone(req["state_in"]), full_output=True)
        out["cont_logits"], out["cont_state"] = logits.float().clone(), clone(state)
    torch.save(out, out_path)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
