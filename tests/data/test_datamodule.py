"""RWKVDataModule: schema, vocab_size, stale/missing data, auto_preload, the batch contract
(padding, loss_mask, reset at document starts), per-rank sampling and the official sampler."""

import inspect
import re
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rwkv.data.config import GROUPS
from rwkv.data.datamodule import RWKVDataModule
from rwkv.errors import DataError
from tests.data.util import write_jsonl

REQUIRED_KEYS = """data_path source source_data_files source_data_dir source_dataset_params
source_dataset_split tokenizer custom_text_key multi_column_keys multi_column_prefix multi_column_suffix
multi_column_train_mask
multi_column_separator conversation_format conversation_key disable_prompt_completion_mask min_token_size
max_token_size text_rechunk_size packing_enable sort_by_length test_split test_split_shuffle dataset_offset
dataset_length num_proc micro_batch_size ctx_len auto_preload reset_state_per_document shuffle sampler
magic_prime epoch_begin num_workers""".split()


@pytest.fixture
def corpus(tmp_path):
    rng = np.random.default_rng(0)
    texts = [f"d{i} " + "x" * int(rng.integers(3, 40)) for i in range(30)]
    return write_jsonl(tmp_path / "c.jsonl", [{"text": t} for t in texts]), texts


def dm_for(tmp_path, corpus_path, **kw):
    base = dict(data_path=str(tmp_path / "data"), source="json", source_data_files=str(corpus_path),
                tokenizer="bytes", num_proc=1, test_split=4)
    return RWKVDataModule.from_keys(**{**base, **kw})


def schema() -> dict:
    """Every key of the `data:` section -> (default, the docstring that documents it): the signature's
    top-level keys and the fields of its groups (rwkv/data/config.py)."""
    init_doc = inspect.getdoc(RWKVDataModule.__init__)
    out = {k: (p.default, init_doc) for k, p in inspect.signature(RWKVDataModule).parameters.items()
           if k not in GROUPS and p.kind is not p.VAR_KEYWORD}
    for cls in GROUPS.values():
        out.update({f.name: (f.default, inspect.getdoc(cls)) for f in fields(cls)})
    return out


def test_signature_is_the_schema():
    sig = inspect.signature(RWKVDataModule)
    keys = schema()
    missing = [k for k in REQUIRED_KEYS if k not in keys]
    assert not missing
    assert keys["micro_batch_size"][0] == 1 and keys["ctx_len"][0] == 4096
    assert keys["auto_preload"][0] is False
    assert keys["reset_state_per_document"][0] is True
    doc = inspect.getdoc(RWKVDataModule.__init__)
    assert all(f"{k}:" in doc for k in sig.parameters)  # one docstring line per key
    assert all(re.search(rf"^\s*{k}:", d, re.M) for k, (_, d) in keys.items())  # and per group key
    assert RWKVDataModule.config_path is None


def test_vocab_size_is_cheap_and_right():
    assert RWKVDataModule(data_path="x").vocab_size == 65536
    assert RWKVDataModule.from_keys(data_path="x", tokenizer="bytes").vocab_size == 320
    assert RWKVDataModule.from_keys(data_path="x", tokenizer="neox").vocab_size == 50304


def test_missing_data_names_the_preload_command(tmp_path, corpus):
    dm = dm_for(tmp_path, corpus[0])
    dm.config_path = "configs/my.yaml"
    dm.prepare_data()  # auto_preload is off: nothing is built
    with pytest.raises(DataError, match=r"does not exist\. Build it with: python preload_datapath\.py "
                                        r"configs/my\.yaml \(or set data\.loader\.auto_preload: true\)"):
        dm.setup("fit")


def test_auto_preload_builds_then_stale_is_detected(tmp_path, corpus):
    dm = dm_for(tmp_path, corpus[0], auto_preload=True)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.train_rows) == 26 and len(dm.test_rows) == 4
    stale = dm_for(tmp_path, corpus[0], test_split=5)
    with pytest.raises(DataError, match="different data config.*Build it with"):
        stale.setup("fit")


def test_batch_contract_packed(tmp_path, corpus):
    dm = dm_for(tmp_path, corpus[0], auto_preload=True, packing_enable=True, packing_max_len=64,
                micro_batch_size=3, shuffle=False)
    dm.prepare_data()
    dm.setup("fit")
    ds = dm.train_rows
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "loss_mask", "lengths", "reset", "index"}
    assert batch["index"].tolist() == [0, 1, 2]  # dataset rows, in order (shuffle off)
    B = 3
    L = max(len(ds[i]["input_ids"]) for i in range(B))
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (B, L)
    assert batch["loss_mask"].dtype == torch.float32 and batch["reset"].dtype == torch.bool
    assert batch["lengths"].dtype == torch.long
    for b in range(B):
        row = ds[b]
        n = len(row["input_ids"])
        assert batch["lengths"][b] == n
        assert batch["input_ids"][b, :n].tolist() == row["input_ids"].tolist()
        assert (batch["input_ids"][b, n:] == 0).all() and (batch["loss_mask"][b, n:] == 0).all()
        starts = [s for s in row["doc_offsets"].tolist() if s > 0]
        assert torch.nonzero(batch["reset"][b]).flatten().tolist() == starts
        expect = row["loss_mask"].astype(np.float32).copy()
        expect[starts] = 0  # a document's first token is not predictable from its own document
        assert batch["loss_mask"][b, :n].tolist() == expect.tolist()
    assert any(len(ds[i]["doc_offsets"]) > 1 for i in range(B))  # the test really saw a reset


def test_no_reset_when_off_or_unpacked(tmp_path, corpus):
    dm = dm_for(tmp_path, corpus[0], auto_preload=True, packing_enable=True, packing_max_len=64,
                reset_state_per_document=False)
    dm.prepare_data()
    assert "reset" not in next(iter(dm.train_dataloader()))
    dm2 = dm_for(tmp_path, corpus[0], data_path=str(tmp_path / "plain"), auto_preload=True)
    dm2.prepare_data()
    assert set(next(iter(dm2.train_dataloader()))) == {"input_ids", "loss_mask", "lengths", "index"}


def test_per_rank_loaders_have_equal_length_and_cover_all_rows(tmp_path, corpus):
    seen, lengths = [], []
    for rank in range(3):
        dm = dm_for(tmp_path, corpus[0], auto_preload=True, micro_batch_size=2, test_split=0)
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=3)
        if rank == 0:
            dm.prepare_data()
        dl = dm.train_dataloader()
        dm.train_sampler.set_epoch(2)
        batches = list(dl)
        lengths.append(len(batches))
        assert len(dl) == len(batches)
        seen += [tuple(r[: int(n)].tolist()) for b in batches for r, n in zip(b["input_ids"], b["lengths"])]
    assert len(set(lengths)) == 1 and lengths[0] == 5  # 30 rows / 3 ranks = 10 each, 2 per batch
    all_rows = {tuple(dm.train_rows[i]["input_ids"].tolist()) for i in range(len(dm.train_rows))}
    assert set(seen) == all_rows and len(seen) == 30


def test_train_batch_is_the_trainers_optimizer_step(tmp_path, corpus):
    """With RWKVTrainer the train loader yields one optimizer step per batch: the trainer's samples_per_step
    (micro batch × accumulation from target_batch_size); a trainer without it accumulates across batches
    itself and gets micro batches."""
    from rwkv.training.trainer import RWKVTrainer

    dm = dm_for(tmp_path, corpus[0], auto_preload=True, test_split=0, micro_batch_size=2)
    dm.prepare_data()
    assert dm.train_dataloader().batch_size == 2  # no trainer: one micro batch
    dm.trainer = RWKVTrainer(accelerator="cpu", devices=1, microbatch_size=2, target_batch_size=6, logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    assert dm.trainer.samples_per_step == 6 and dm.train_dataloader().batch_size == 6
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1)  # e.g. a plain lightning Trainer
    assert dm.train_dataloader().batch_size == 2


def test_train_loader_is_resumable(tmp_path, corpus):
    """Lightning saves `loader.state_dict()` with checkpoints and calls `load_state_dict` on resume."""
    dm = dm_for(tmp_path, corpus[0], auto_preload=True, test_split=0, micro_batch_size=2)
    dm.prepare_data()
    progress = SimpleNamespace(processed=3)
    dm.trainer = SimpleNamespace(global_rank=0, world_size=1, samples_per_step=4,
                                 fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(
                                     batch_progress=SimpleNamespace(current=progress))))
    dl = dm.train_dataloader()
    assert dl.batch_size == 4  # micro batch 2 × accumulation 2: one batch per optimizer step
    dm.train_sampler.set_epoch(4)
    full = [r for b in dl for r in b["index"].tolist()]
    assert dl.state_dict() == {"epoch": 4, "skip_samples": 12}  # 3 steps × 4 samples trained on
    resumed = dm.train_dataloader()
    resumed.load_state_dict({"epoch": 4, "skip_samples": 12})
    resumed.sampler.set_epoch(4)  # Lightning calls this again at the start of the resumed epoch
    assert len(resumed) == len(dl)  # the whole epoch: Lightning counts the restored batches as done
    assert [r for b in resumed for r in b["index"].tolist()] == full[12:]


def test_val_loader_reads_test_split_and_workers_work(tmp_path, corpus):
    dm = dm_for(tmp_path, corpus[0], auto_preload=True, micro_batch_size=2, num_workers=1)
    dm.prepare_data()
    rows = [r for b in dm.val_dataloader() for r in b["lengths"].tolist()]
    assert len(rows) == 4
    assert sum(len(b["lengths"]) for b in dm.train_dataloader()) == 26


def test_official_sampler_batches(tmp_path):
    from rwkv.data.binidx import BinIdxReader, official_offset
    from rwkv.data.make_data import make_data

    src = write_jsonl(tmp_path / "in.jsonl", [{"text": "abcdefghij" * (i + 1)} for i in range(40)])
    make_data(str(src), str(tmp_path / "bin"), copies=2, tokenizer="bytes", log=lambda s: None)
    dm = RWKVDataModule.from_keys(data_path=str(tmp_path / "unused"), source="binidx",
                                  source_data_files=str(tmp_path / "bin"), tokenizer="bytes", sampler="official",
                                  ctx_len=16, micro_batch_size=4, epoch_begin=1)
    dm.prepare_data()
    dm.setup("fit")
    dl = dm.train_dataloader()
    assert len(dl) == 40320 // 4
    batch = next(iter(dl))
    tokens = np.asarray(BinIdxReader(tmp_path / "bin").tokens())
    p = dm.resolved_magic_prime
    assert batch["input_ids"].shape == (4, 17) and (batch["loss_mask"] == 1).all()
    for i in range(4):
        off = official_offset(1 + 40320 + i, p, 16)
        assert batch["input_ids"][i].tolist() == tokens[off:off + 17].tolist()


def test_fit_with_a_real_trainer(tmp_path, corpus):
    import lightning.pytorch as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(320, 8)
            self.head = torch.nn.Linear(8, 320)
            self.seen = 0

        def training_step(self, batch, i):
            logits = self.head(self.emb(batch["input_ids"][:, :-1]))
            loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch["input_ids"][:, 1:],
                                                     reduction="none")
            mask = batch["loss_mask"][:, 1:]
            self.seen += int(batch["input_ids"].shape[0])
            return (loss * mask).sum() / mask.sum().clamp(min=1)

        def validation_step(self, batch, i):
            pass

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = dm_for(tmp_path, corpus[0], auto_preload=True, packing_enable=True, packing_max_len=48,
                micro_batch_size=2)
    model = Tiny()
    trainer = pl.Trainer(max_steps=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                         default_root_dir=str(tmp_path))
    trainer.fit(model, datamodule=dm)
    assert model.seen == 6 and trainer.global_step == 3
