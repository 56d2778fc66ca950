"""make_data equivalent: jsonl -> .bin/.idx for the official pretraining sampler (docs/model-spec.md §6).

    python -m rwkv.data.make_data in.jsonl out_prefix --copies 3 --ctx_len 4096 [--tokenizer world]

Like RWKV-LM's make_data.py: one item per document (its tokens followed by the end-of-document token
0), `copies` passes over the documents, each in its own shuffled order, then prints the token count
and the magic_prime for ctx_len (§6.2). Differences: the documents are tokenized once (not once per
copy) with the fast tokenizer, the shuffle is seeded, and the files appear only when complete.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from ..errors import DataError
from .binidx import BinIdxWriter, magic_prime, token_dtype
from .tokenizers import get_tokenizer


def read_jsonl_texts(path: str, text_key: str = "text") -> list[str]:
    texts, lineno = [], 0
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    with f:
        try:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}, line {lineno}: malformed JSON ({e.msg}); "
                                    "fix or remove the line") from None
                text = rec.get(text_key) if isinstance(rec, dict) else None
                if not isinstance(text, str):
                    raise DataError(f"{path}, line {lineno}: needs a string field {text_key!r} "
                                    "(choose another with --text_key)")
                texts.append(text)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}, line {lineno + 1}: not UTF-8 ({e.reason}); re-encode the file") \
                from None
    return texts


def make_data(in_path: str, out_prefix: str, copies: int = 1, ctx_len: int | None = None,
              tokenizer: str = "world", text_key: str = "text", seed: int = 0, eod: int = 0,
              log=print) -> dict:
    if copies < 1:
        raise DataError(f"--copies must be >= 1, got {copies}")
    tok = get_tokenizer(tokenizer)
    texts = read_jsonl_texts(in_path, text_key)
    if not texts:
        raise DataError(f"{in_path}: no documents")
    docs = [np.asarray(ids + [eod], dtype=np.int64) for ids in tok.encode_batch(texts)]
    writer = BinIdxWriter(out_prefix, token_dtype(tok.vocab_size))
    rng = np.random.default_rng(seed)
    try:
        for _ in range(copies):
            for i in rng.permutation(len(docs)):
                writer.add_item(docs[i])
        writer.close()
    except BaseException:
        writer.abort()
        raise
    tokens = copies * sum(len(d) for d in docs)
    info = {"documents": len(docs), "copies": copies, "tokens": tokens, "prefix": writer.prefix}
    log(f"wrote {writer.prefix}.bin/.idx: {len(docs):,} documents x {copies} copies = {tokens:,} tokens "
        f"({np.dtype(writer.dtype).name})")
    if ctx_len:
        try:
            p = magic_prime(tokens, ctx_len)
            info["magic_prime"] = p
            log(f"### magic_prime = {p} (for ctx_len {ctx_len}; data_size//ctx_len = {tokens // ctx_len})")
        except DataError as e:
            log(f"no magic_prime: {e}")
    return info


def main(argv: list[str] | None = None) -> int:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(prog="python -m rwkv.data.make_data", description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="jsonl file, one {\"text\": ...} object per line")
    parser.add_argument("out_prefix", help="output path without .bin/.idx")
    parser.add_argument("--copies", type=int, default=1, help="shuffled passes over the documents")
    parser.add_argument("--ctx_len", type=int, default=4096, help="print the magic_prime for this ctx_len")
    parser.add_argument("--tokenizer", default="world", help="world, neox, bytes or a tokenizer path")
    parser.add_argument("--text_key", default="text", help="JSON field holding the text")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-copy shuffles")
    args = parser.parse_args(argv)
    try:
        make_data(args.input, args.out_prefix, args.copies, args.ctx_len, args.tokenizer, args.text_key,
                  args.seed)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
