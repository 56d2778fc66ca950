"""Helpers for the data tests: tiny corpora written into tmp_path, quiet preloads."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _quiet_datasets():
    import datasets

    datasets.disable_progress_bars()
    yield


@pytest.fixture
def build(tmp_path):
    """build(**data_keys) -> (cfg, manifest, DatasetDict); keys by name (DataConfig.from_keys), bytes tokenizer and
    1 process by default."""
    import datasets

    from rwkv.data.config import DataConfig
    from rwkv.data.preload import preload

    def _build(**kw):
        kw.setdefault("data_path", str(tmp_path / "out"))
        kw.setdefault("tokenizer", "bytes")
        kw.setdefault("num_proc", 1)
        kw.setdefault("test_split", 0)
        cfg = DataConfig.from_keys(**kw)
        manifest = preload(cfg, progress=lambda m: None)
        return cfg, manifest, datasets.load_from_disk(cfg.data_path)

    return _build
