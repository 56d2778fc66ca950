"""Text generation with the recurrent state (docs/model-spec.md §1.3 "RNN/inference form"): the prompt runs in
parallel mode once, then each new token is one T=1 call that carries the state. Used by dragon_test.py
and the quickstart evaluation."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def sample_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float = 0.85,
                  generator: torch.Generator | None = None) -> int:
    """Nucleus sampling on one row of logits; temperature 0 (or top_p 0) is greedy."""
    if temperature <= 0 or top_p <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(descending=True)
    keep = sorted_p.cumsum(-1) - sorted_p < top_p  # smallest set whose mass reaches top_p (≥ 1 token)
    sorted_p = sorted_p * keep
    choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
    return int(order[choice])


@torch.no_grad()
def stream(model, prompt_ids: list[int], max_tokens: int, temperature: float = 1.0, top_p: float = 0.85,
           stop_ids: tuple[int, ...] = (), seed: int | None = None, device="cpu") -> Iterator[int]:
    """Yield generated token ids one at a time (state carried between calls)."""
    if not prompt_ids:
        raise ValueError("the prompt encodes to no tokens")
    gen = torch.Generator(device="cpu")
    if seed is not None:
        gen.manual_seed(seed)
    logits, state = model(torch.tensor([prompt_ids], device=device))
    last = logits[0, -1]
    for _ in range(max_tokens):
        tok = sample_logits(last.cpu(), temperature, top_p, gen)
        if tok in stop_ids:
            return
        yield tok
        logits, state = model(torch.tensor([[tok]], device=device), state)
        last = logits[0, -1]


@torch.no_grad()
def greedy_complete(model, prompts: list[list[int]], max_new: int, stop_id: int, batch_size: int = 64,
                    device="cpu") -> list[list[int]]:
    """Greedy completions of many prompts, batched by prompt length (no padding inside the prompt)."""
    out: list[list[int] | None] = [None] * len(prompts)
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    for _, idxs in sorted(by_len.items()):
        for s in range(0, len(idxs), batch_size):
            rows = idxs[s:s + batch_size]
            logits, state = model(torch.tensor([prompts[i] for i in rows], device=device))
            nxt = logits[:, -1].argmax(-1)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            gen = [[] for _ in rows]
            for _ in range(max_new):
                done |= nxt == stop_id
                for j, t in enumerate(nxt.tolist()):
                    if not done[j]:
                        gen[j].append(t)
                if bool(done.all()):
                    break
                logits, state = model(nxt[:, None], state)
                nxt = logits[:, -1].argmax(-1)
            for j, i in enumerate(rows):
                out[i] = gen[j]
    return out
