"""The sampler (`dragon_test.py`, `python -m rwkv sample`): stream a completion from a .pth with the recurrent
state carried token by token."""

from __future__ import annotations

import argparse
import sys
import time

import torch

DEFAULT_PROMPT = ("\nIn a shocking finding, scientist discovered a herd of dragons living in a remote, "
                  "previously unexplored valley, in Tibet. Even more surprising to the researchers was the "
                  "fact that the dragons spoke perfect Chinese.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="dragon_test.py", description=__doc__)
    p.add_argument("model", help="an RWKV .pth (x070, x060 or x052)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"],
                   help="default: fp32 on CPU, bf16 on CUDA")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate")
    p.add_argument("--prompt", default=DEFAULT_PROMPT)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=0.7)
    p.add_argument("--tokenizer", default=None, help="world, neox, bytes or a path (default: from the vocab size)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--state", default=None,
                   help="a state file ({blocks.{i}.att.time_state: [H,N,N]}, export_checkpoint.py --state): the "
                   "learned initial state the prompt starts from")
    args = p.parse_args(argv)

    from ..checkpoint.official_pth import DTYPES
    from ..data.tokenizers import get_tokenizer, tokenizer_for_vocab
    from ..errors import user_error_types
    from ..inference import stream
    from ..model import from_pth

    try:
        model = from_pth(args.model)
        if args.state:
            from ..peft import attach_time_state, load_state_file

            attach_time_state(model, load_state_file(args.state), source=args.state)
        tok = get_tokenizer(args.tokenizer or tokenizer_for_vocab(model.cfg.vocab_size))
    except (*user_error_types(), ValueError) as e:
        print(f"dragon_test.py: {e}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("dragon_test.py: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    dtype = DTYPES[args.dtype or ("bf16" if args.device == "cuda" else "fp32")]
    model = model.to(args.device, dtype).eval()
    for block in model.blocks:  # learned states stay fp32 like every WKV state (docs/model-spec.md §3.4)
        if "time_state" in block.att._parameters:
            block.att.time_state.data = block.att.time_state.data.float()
    cfg = model.cfg
    print(f"{args.model}: {cfg.version} L{cfg.n_layer} D{cfg.n_embd} V{cfg.vocab_size}, tokenizer {tok.name}, "
          f"{args.device} {dtype}", file=sys.stderr)
    ids = tok.encode(args.prompt)
    sys.stdout.write(args.prompt)
    out, shown, t0 = [], "", time.perf_counter()
    for t in stream(model, ids, args.tokens, args.temperature, args.top_p, seed=args.seed, device=args.device):
        out.append(t)
        text = tok.decode(out)
        if not text.endswith("\ufffd"):  # hold back an incomplete UTF-8 sequence (docs/model-spec.md §5.1)
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    dt = time.perf_counter() - t0
    print(f"\n\n[{len(out)} tokens in {dt:.1f} s, {len(out) / max(dt, 1e-9):.1f} tokens/s]", file=sys.stderr)
    return 0
