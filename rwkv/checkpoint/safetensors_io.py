"""safetensors files: written atomically (temporary file, then rename), read into a flat tensor dict.

The `--format safetensors` export keeps the official key names and shapes of docs/model-spec.md §1.2 in
fp16 or bf16: what runtimes that read safetensors instead of pickles (Ai00 / web-rwkv, RWKV Runner's
WebGPU mode) take, and what Runner's own converter writes (docs/model-spec.md §4.3).
"""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_file


def save_safetensors(sd: dict, path, metadata: dict | None = None) -> None:
    """Write `sd` (tensors as given: dtype and key order are the caller's choice) to `path` atomically."""
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        # safetensors refuses views that share storage or are not contiguous: hand it compact copies
        save_file({k: v.detach().to("cpu").contiguous() for k, v in sd.items()}, tmp,
                  metadata={"format": "pt", **(metadata or {})})


def load_safetensors(path) -> dict:
    """All tensors of a safetensors file, in the file's dtypes, in the file's key order."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - truncated files and foreign formats: name the file
        raise ValueError(f"{path}: cannot be read as a safetensors file ({type(e).__name__}: {e}); is it "
                         "complete (not truncated)?") from e


def is_safetensors(path) -> bool:
    return Path(path).suffix in (".safetensors", ".st")

