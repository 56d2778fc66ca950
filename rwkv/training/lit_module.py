"""`RWKVLitModule`: the plain RWKV model wrapped for Lightning (docs/design.md §3.5, §4).

One training step = one optimizer step: the batch holds all micro batches of the step (see
trainer.RWKVTrainer), each run through the segment loop (segments.py). Every backward but the last goes
through `strategies.StepBackwards.backward`; the last is returned to Lightning, and gradient reduction
happens exactly once per step (how, per strategy: strategies.StepBackwards).
"""

from __future__ import annotations

import math
import time
from typing import Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Timer

from ..errors import ConfigError
from ..model import RWKVConfig, build_model, check_state_dict, infer_config, load_state_dict
from ..peft import training as peft_training
from .config import OptimizerConfig, SegmentConfig, as_dict, group_values
from .loss import head_ce_l2wrap, logits_ce_l2wrap
from .optim import build_optimizer, lr_at, param_groups
from .segments import eval_sample, run_sample, segment_bounds
from .strategies import StepBackwards, deepspeed_of


class RWKVLitModule(pl.LightningModule):
    def __init__(
        self,
        version: Literal["x070", "x060", "x052"] = "x070",
        load_model: str | None = None,
        n_layer: int | None = None,
        n_embd: int | None = None,
        head_size: int = 64,
        vocab_size: int | None = None,
        dim_ffn: int | None = None,
        segments: SegmentConfig = SegmentConfig(),  # noqa: B008 - frozen dataclass, never mutated
        optimizer: OptimizerConfig = OptimizerConfig(),  # noqa: B008 - frozen dataclass, never mutated
        l2wrap: bool = True,
        on_nonfinite_loss: Literal["stop", "skip"] = "stop",
        peft: dict | None = None,
        **flat,
    ):
        """
        Args:
            version: Model version for a fresh model (x070, x060, x052); inferred from load_model when given.
            load_model: A .pth to start from (official format); its sizes override n_layer/n_embd/….
            n_layer: Number of layers of a fresh model.
            n_embd: Embedding size of a fresh model.
            head_size: Head size N (64 in every official model).
            vocab_size: Model vocab; linked from the tokenizer (data.format.tokenizer), no need to set it.
            dim_ffn: Channel-mix size (default 4·n_embd for x070, 3.5·n_embd for x060/x052).
            segments: Segment length, BPTT mode and block recomputation (rwkv/training/config.py).
            optimizer: Learning rates, schedule, Adam settings, weight decay (rwkv/training/config.py).
            l2wrap: Apply L2Wrap (keeps logits near 0; docs/model-spec.md §1.5).
            on_nonfinite_loss: On a NaN/inf loss: stop with a message, or skip the step.
            peft: Parameter-efficient fine-tuning of load_model (rwkv/peft): lora (peft.LoraConfig fields),
                state_tuning, train_parts (ln, time, emb, head), adapter (a peft adapter dir), state_lr.
            flat: The keys that moved into segments/optimizer, in their old place (e.g. lr_init=…): still
                accepted, with one warning each; checkpoints saved before the move hold them this way.
        """
        super().__init__()
        segments, optimizer = group_values(flat, segments, optimizer)
        # Plain dicts in hparams (not dataclasses), so checkpoints load with weights_only=True.
        self.save_hyperparameters({
            "version": version, "load_model": load_model, "n_layer": n_layer, "n_embd": n_embd,
            "head_size": head_size, "vocab_size": vocab_size, "dim_ffn": dim_ffn,
            "segments": as_dict(segments), "optimizer": as_dict(optimizer), "l2wrap": l2wrap,
            "on_nonfinite_loss": on_nonfinite_loss, "peft": peft,
        })
        bptt = segments.bptt
        if isinstance(bptt, int) and bptt < 0:
            raise ConfigError(f"model.segments.bptt must be truncated, full or an integer ≥ 0, got {bptt}")
        self.model = peft_training.setup(self._build(), self.hparams)
        self.strict_loading = peft_training.strict_loading(self.model)  # PEFT checkpoints lack the frozen base
        self.tokens_seen = 0  # all ranks, restored from checkpoints (drives a token-budget schedule)
        self.warmup_tokens = None  # tokens_seen when the warm-up ended (token progress starts there)
        self._backwards: StepBackwards | None = None  # this step's, made in training_step
        self._drop_grads = False
        self._step_t0 = None
        self._val_sums = None

    # ---- model -------------------------------------------------------------------------------------
    def _build(self):
        hp = self.hparams
        if hp.load_model:
            sd = load_state_dict(hp.load_model)
            cfg = infer_config(sd)
            for key in ("n_layer", "n_embd", "head_size", "dim_ffn"):
                want = getattr(hp, key)
                if want is not None and key != "head_size" and want != getattr(cfg, key):
                    raise ConfigError(f"model.{key}={want} disagrees with {hp.load_model} ({getattr(cfg, key)}); "
                                     f"remove model.{key} to take it from the file")
            if hp.vocab_size and hp.vocab_size > cfg.vocab_size:
                raise ConfigError(f"the tokenizer needs vocab_size {hp.vocab_size} but {hp.load_model} has "
                                 f"{cfg.vocab_size} rows; pick the tokenizer the model was trained with")
            check_state_dict(sd, cfg, source=hp.load_model)
            model = build_model(cfg, grad_cp=self.segment_config.grad_cp)
            model.load_state_dict(sd)
            return model
        missing = [k for k in ("n_layer", "n_embd", "vocab_size") if getattr(hp, k) is None]
        if missing:
            raise ConfigError("a fresh model needs " + ", ".join(f"model.{k}" for k in missing)
                             + " (vocab_size comes from data.format.tokenizer), or model.load_model")
        cfg = RWKVConfig(version=hp.version, n_layer=hp.n_layer, n_embd=hp.n_embd, vocab_size=hp.vocab_size,
                         head_size=hp.head_size, dim_ffn=hp.dim_ffn)
        return build_model(cfg, grad_cp=self.segment_config.grad_cp, init=True)

    @property
    def segment_config(self) -> SegmentConfig:
        """`model.segments`, read from hparams each time (hparams stay the one place that holds them)."""
        return SegmentConfig(**self.hparams.segments)

    @property
    def optimizer_config(self) -> OptimizerConfig:
        """`model.optimizer`, read from hparams each time."""
        return OptimizerConfig(**self.hparams.optimizer)

    def forward(self, idx, state=None, reset=None):
        return self.model(idx, state, reset)

    # ---- strategy helpers (the plumbing itself: strategies.StepBackwards) --------------------------
    @property
    def _deepspeed(self):
        return deepspeed_of(self.trainer)

    def _loss_fn(self, hidden, targets, weights, l2wrap: bool | None = None):
        """Σ w·CE of a segment (+ L2Wrap in backward when training). The caller divides by the learned
        tokens of the micro batch (segments.run_sample), which gives the official mean CE + L2Wrap."""
        l2wrap = self.hparams.l2wrap if l2wrap is None else l2wrap
        ds = self._deepspeed
        if ds is not None and ds.zero_stage_3:  # head weight is partitioned: call the module
            return logits_ce_l2wrap(self.model.head(hidden), targets, weights, l2wrap)
        return head_ce_l2wrap(hidden, self.model.head.weight, targets, weights, l2wrap)

    def _eval_loss_fn(self, hidden, targets, weights):
        return self._loss_fn(hidden, targets, weights, l2wrap=False)

    def _close_sync_scope(self):
        if self._backwards is not None:
            self._backwards.close()

    def on_after_backward(self):
        self._close_sync_scope()  # flushes DeepSpeed's coalesced reduction after the step's last backward
        if self._drop_grads:  # a skipped step: no gradient, so AdamW changes no weight, moment or step count
            self._drop_grads = False
            for p in self.model.parameters():
                p.grad = None

    def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
        """Lightning zeroes gradients between `training_step` and its backward, which would erase the
        gradients of the step's earlier segments; they are cleared at the start of `training_step`."""

    # ---- training ----------------------------------------------------------------------------------
    # Batch fields that describe the batch rather than feed the model stay on the CPU, so that planning a
    # step (micro batch lengths, segment counts, token counts) never waits for the device.
    HOST_FIELDS = ("lengths", "index")

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        if not isinstance(batch, dict):
            return super().transfer_batch_to_device(batch, device, dataloader_idx)
        host = {k: batch[k] for k in self.HOST_FIELDS if k in batch}
        moved = super().transfer_batch_to_device({k: v for k, v in batch.items() if k not in host}, device,
                                                 dataloader_idx)
        return {**moved, **host}

    def _micro_batches(self, batch):
        mb = getattr(self.trainer, "microbatch_size", batch["input_ids"].shape[0])
        B = batch["input_ids"].shape[0]
        out = []
        for s in range(0, B, mb):
            part = {k: v[s:s + mb] for k, v in batch.items() if torch.is_tensor(v) and v.dim() >= 1}
            L = int(part["lengths"].max()) if "lengths" in part else part["input_ids"].shape[1]
            out.append({k: (v[:, :L] if v.dim() == 2 else v) for k, v in part.items()})
        return out

    def _segment_counts(self, micro) -> list[int]:
        """Segments of each micro batch, the maximum over ranks: every rank then makes the same number of
        forward and backward calls (ZeRO-3 gathers parameters collectively in each)."""
        local = [len(segment_bounds(m["input_ids"].shape[1] - 1, self.segment_config.ctx_len)) for m in micro]
        return [int(c) for c in self._all_reduce(local, "max")]

    def _all_reduce(self, values, op: str) -> list[float]:
        """Reduce a list of numbers (or device scalars) over ranks with one collective; returns floats
        (the only host synchronisation of the values)."""
        if self.trainer.world_size == 1 and all(isinstance(v, (int, float)) for v in values):
            return [float(v) for v in values]  # host numbers on one process: no device round trip
        t = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(())
                         for v in values]) if values else torch.zeros(0, dtype=torch.float64, device=self.device)
        if self.trainer.world_size > 1:
            t = self.trainer.strategy.reduce(t, reduce_op=op)
        return t.tolist()

    def on_train_batch_start(self, batch, batch_idx):
        hp = self.optimizer_config
        if self.warmup_tokens is None and self.global_step == hp.warmup_steps:
            self.warmup_tokens = self.tokens_seen  # what the warm-up consumed: token progress starts here
        lr = lr_at(self.global_step, self.tokens_seen, lr_init=hp.lr_init, lr_final=hp.lr_final,
                   warmup_steps=hp.warmup_steps, schedule=hp.lr_schedule,
                   total_steps=self._planned_steps(), total_tokens=hp.token_budget,
                   time_progress=self._time_progress() if hp.schedule_by_time else None,
                   warmup_tokens=self.warmup_tokens)
        for opt in self.trainer.optimizers:
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
        self._lr = lr
        self._step_t0 = time.perf_counter()

    def _time_progress(self) -> float:
        """Elapsed share of trainer.max_time (Lightning's Timer callback, whose elapsed time checkpoints
        carry across a resume); the maximum over ranks, so that every rank uses the same lr."""
        timer = next((cb for cb in self.trainer.callbacks if isinstance(cb, Timer)), None)
        remaining = timer.time_remaining("train") if timer is not None else None
        if remaining is None:
            raise ConfigError("model.optimizer.schedule_by_time: true needs trainer.max_time (e.g. \"00:00:10:00\")")
        elapsed = timer.time_elapsed("train")
        (share,) = self._all_reduce([elapsed / max(elapsed + remaining, 1e-9)], "max")
        return share  # lr_at clamps progress to [0, 1]

    def _planned_steps(self) -> int | None:
        try:
            steps = self.trainer.estimated_stepping_batches
        except Exception:  # noqa: BLE001 - unknown length (e.g. infinite loader): no step-based decay
            return None
        return int(steps) if math.isfinite(steps) else None

    def training_step(self, batch, batch_idx):
        seg, budget = self.segment_config, self.optimizer_config.token_budget
        micro = self._micro_batches(batch)
        counts = self._segment_counts(micro)
        local_tokens = sum(int(m["lengths"].sum()) if "lengths" in m else m["input_ids"].numel() for m in micro)
        self._backwards = StepBackwards(self.trainer)
        self._backwards.zero_grad()
        self._backwards.open()
        results = []
        for i, m in enumerate(micro):
            try:
                res = run_sample(self.model, m["input_ids"], m["loss_mask"], seg.ctx_len, seg.bptt, self._loss_fn,
                                 self._backwards.backward, reset=m.get("reset"), scale=1.0 / len(micro),
                                 n_segments=counts[i], defer_last=i == len(micro) - 1)
            except BaseException:
                self._close_sync_scope()
                raise
            results.append(res)
        # The step's one read-back: loss and learned tokens summed on the device over micro batches, then
        # over ranks in one collective, with the token count and a non-finite flag riding along.
        loss_sum = torch.stack([torch.as_tensor(r.loss_sum).double() for r in results]).sum()
        learned = torch.stack([torch.as_tensor(r.learned).double() for r in results]).sum()
        local_bad = (~torch.isfinite(loss_sum)).double()
        loss_sum_all, learned_all, step_tokens, n_bad = self._all_reduce(
            [torch.nan_to_num(loss_sum, nan=0.0, posinf=0.0, neginf=0.0), learned, float(local_tokens),
             local_bad], "sum")
        if n_bad:
            return self._handle_nonfinite(micro, results, bool(local_bad.item()))
        if self._backwards.close_before_final:
            self._close_sync_scope()
        self.tokens_seen += int(step_tokens)
        self._step_tokens = step_tokens
        self._log_step(loss_sum_all / max(learned_all, 1.0))
        if budget and self.tokens_seen >= budget:
            self.trainer.should_stop = True
        return results[-1].deferred

    def _nonfinite_report(self, micro, results, local_bad: bool) -> str:
        """Where the first non-finite loss of the step was, as every rank will print it: the lowest bad
        rank's micro batch, segment and dataset rows (broadcast from that rank)."""
        world = self.trainer.world_size
        (first_bad,) = self._all_reduce([float(self.global_rank if local_bad else world)], "min")
        first_bad = int(first_bad)
        where = None
        if self.global_rank == first_bad:
            for i, (m, res) in enumerate(zip(micro, results)):
                seg = res.first_nonfinite_segment()
                if seg is not None:
                    rows = m["index"].tolist() if "index" in m else "unknown"
                    where = f"rank {first_bad}, micro batch {i}, segment {seg}, dataset rows {rows}"
                    break
        if world > 1:
            where = self.trainer.strategy.broadcast(where, src=first_bad)
        return where or f"rank {first_bad}"

    def _handle_nonfinite(self, micro, results, local_bad: bool):
        where = self._nonfinite_report(micro, results, local_bad)
        if self.hparams.on_nonfinite_loss == "stop":
            self._close_sync_scope()
            raise RuntimeError(f"non-finite loss at step {self.global_step} ({where}). Lower model.optimizer.lr_init, "
                               "check the data, or set model.on_nonfinite_loss: skip to skip such steps.")
        self.print(f"skipping step {self.global_step}: non-finite loss ({where})")
        # Lightning refuses a skipped training_step (None) in distributed runs, and DDP's reducer and
        # DeepSpeed's engine expect the step's last backward: return a zero-valued loss on every rank.
        for p in self.model.parameters():
            if p.grad is not None:
                p.grad.zero_()
        if self._deepspeed is None:
            self._drop_grads = True  # on_after_backward: AdamW then leaves every parameter untouched
            return sum((p * 0).sum() for p in self.model.parameters() if p.requires_grad)
        # DeepSpeed's ZeRO optimizers keep gradient buffers of their own and step every time. Their
        # overflow check is what discards a step without touching weights or Adam moments: give every rank
        # a NaN gradient so it fires on all of them (DeepSpeed's bf16.check_grad_overflow, on by default,
        # makes bf16 runs check too). The loss goes through a 1-token forward because under ZeRO-3 the
        # parameters only hold their values inside the module's forward.
        logits, _ = self.model(torch.zeros(1, 1, dtype=torch.long, device=self.device))
        return logits.float().sum() * float("nan")

    def _log_step(self, loss: float):
        # the mean over all ranks' learned tokens (the all-reduce in training_step), logged by rank 0
        self.log("train/loss", loss, prog_bar=True, on_step=True, rank_zero_only=True)
        self.log("lr", self._lr, prog_bar=True, on_step=True, rank_zero_only=True)
        self.log("train/tokens", float(self.tokens_seen), on_step=True, rank_zero_only=True)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        """Throughput of the whole step (forward, every backward, optimizer), all ranks' tokens."""
        if self._step_t0 is not None and getattr(self, "_step_tokens", None):
            dt = time.perf_counter() - self._step_t0
            self.log("train/tok_s", self._step_tokens / dt, prog_bar=True, on_step=True, rank_zero_only=True)
            self._step_tokens = None

    # ---- validation --------------------------------------------------------------------------------
    def on_validation_epoch_start(self):
        self._val_sums = [0.0, 0.0]

    def validation_step(self, batch, batch_idx):
        micro = self._micro_batches(batch)
        counts = self._segment_counts(micro)  # as in training: equal forward calls on every rank
        for m, n in zip(micro, counts):
            res = eval_sample(self.model, m["input_ids"], m["loss_mask"], self.segment_config.ctx_len,
                              self._eval_loss_fn, reset=m.get("reset"), n_segments=n)
            self._val_sums[0] = self._val_sums[0] + res.loss_sum
            self._val_sums[1] = self._val_sums[1] + res.learned

    def on_validation_epoch_end(self):
        loss_sum, learned = self._all_reduce(self._val_sums, "sum")
        loss = loss_sum / max(learned, 1.0)
        self.log("val/loss", loss, prog_bar=True, rank_zero_only=True)
        self.log("val/ppl", math.exp(min(loss, 50.0)), rank_zero_only=True)

    # ---- optimizer and checkpoints -----------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.optimizer_config
        ds = self._deepspeed
        offload = bool(ds is not None and getattr(ds, "offloads_optimizer", False))
        from lightning.pytorch.plugins.precision import MixedPrecision

        groups = peft_training.param_groups(self) or param_groups(self.model, hp.weight_decay, self.layerwise_lr)
        mixed = isinstance(self.trainer.precision_plugin, MixedPrecision)
        return build_optimizer(groups, hp.lr_init, (hp.beta1, hp.beta2), hp.adam_eps, offload=offload,
                               fused=not mixed)

    @property
    def layerwise_lr(self) -> bool:
        if self.optimizer_config.layerwise_lr is not None:
            return bool(self.optimizer_config.layerwise_lr)
        return self.model.cfg.version in ("x060", "x052")

    def on_save_checkpoint(self, checkpoint):
        checkpoint["rwkv"] = {"tokens_seen": self.tokens_seen, "warmup_tokens": self.warmup_tokens,
                              "model_config": self.model.cfg.to_dict()}
        peft_training.on_save(self, checkpoint)  # only the trainable tensors + the base's path and hash

    def on_load_checkpoint(self, checkpoint):
        peft_training.on_load(self, checkpoint)
        self.tokens_seen = int(checkpoint.get("rwkv", {}).get("tokens_seen", 0))
        self.warmup_tokens = checkpoint.get("rwkv", {}).get("warmup_tokens")
