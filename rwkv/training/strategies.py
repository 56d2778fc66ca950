"""Strategies that run unchanged on CPU and GPU (docs/design.md §6).

Lightning's DeepSpeedStrategy refuses a CPU accelerator. `RWKVDeepSpeedStrategy` lifts exactly the three
CUDA assumptions (the accelerator check, the CUDA device-index validation, and `device_rank` = the CUDA
index) when the accelerator is the CPU, and is registered under the usual names (`deepspeed_stage_2`,
`deepspeed_stage_3_offload`, …), so one YAML serves CPU tests and GPU clusters. Registration happens when
the CLI starts (`register_strategies()`), never at import.

`StepBackwards` is the strategy plumbing of one training step (which backward reduces gradients, who
clears them), so that the LightningModule only says what a step computes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from contextlib import ExitStack
from pathlib import Path

from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, StrategyRegistry

log = logging.getLogger(__name__)


def _skip_cpu_shm_comm_build() -> None:
    """DeepSpeed JIT-compiles a shared-memory all-reduce op for CPU (60–105 s on a cold machine); torch's
    gloo collectives gave identical results when we compared them, so use those."""
    comm = importlib.import_module("deepspeed.comm.torch")  # `import deepspeed.comm.torch` finds torch
    comm.build_shm_op = lambda: None


def deepspeed_of(trainer) -> DeepSpeedStrategy | None:
    s = trainer.strategy
    return s if isinstance(s, DeepSpeedStrategy) else None


class StepBackwards:
    """The backwards of one training step under the run's strategy, reducing gradients across ranks once per
    step. Every backward but the step's last goes through `backward`; the last is Lightning's. Under DDP the
    earlier backwards run inside DDP's forward (the reducer is not armed yet, gradients accumulate locally);
    under DeepSpeed ZeRO-2/3 all of them run inside `coalesce_grad_reduction()`, under ZeRO-1 the earlier
    ones inside `no_sync()` (then `close_before_final` is set: close before the last backward)."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.deepspeed = deepspeed_of(trainer)
        self.close_before_final = False
        self._scope: ExitStack | None = None

    def zero_grad(self) -> None:
        if self.deepspeed is None:  # DeepSpeed clears (and partitions) gradients in engine.step()
            for opt in self.trainer.optimizers:
                opt.zero_grad(set_to_none=True)

    def open(self) -> None:
        self._scope = ExitStack()
        ds = self.deepspeed
        if ds is None or ds.world_size == 1:
            return
        engine = self.trainer.model
        stage = int(ds.config.get("zero_optimization", {}).get("stage", 0))
        if stage >= 2 or hasattr(engine.optimizer, "_coalesce_grad_reduction"):
            self._scope.enter_context(engine.coalesce_grad_reduction())
        else:  # ZeRO-1 with DeepSpeed's BF16 optimizer wrapper: earlier backwards without reduction
            self._scope.enter_context(engine.no_sync())
            self.close_before_final = True

    def close(self) -> None:
        """Leave the scope (flushes DeepSpeed's coalesced reduction); a second call does nothing."""
        if self._scope is not None:
            scope, self._scope = self._scope, None
            scope.close()

    def backward(self, tensor) -> None:
        """A backward pass that is not the step's last."""
        if self.deepspeed is not None:
            self.trainer.model.backward(tensor)  # the DeepSpeed engine (scaling, ZeRO bookkeeping)
            return
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        (scaler.scale(tensor) if scaler is not None else tensor).backward()


class RWKVDeepSpeedStrategy(DeepSpeedStrategy):
    @property
    def _on_cpu(self) -> bool:
        return isinstance(self.accelerator, CPUAccelerator)

    def setup_environment(self) -> None:
        if not self._on_cpu:
            return super().setup_environment()
        _skip_cpu_shm_comm_build()
        DDPStrategy.setup_environment(self)  # the parent's only addition is the CUDA-only check

    def setup_distributed(self) -> None:
        if not self._on_cpu:
            return super().setup_distributed()
        from lightning.fabric.utilities.seed import reset_seed

        reset_seed()
        self.set_world_ranks()  # no CUDA device-index validation on CPU
        self._init_deepspeed_distributed()

    @property
    def _device_rank(self):
        return self.local_rank if self._on_cpu else self.root_device.index

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank), config=self.config, model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()), optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False)
        return engine, ds_optimizer

    def _initialize_deepspeed_inference(self, model) -> None:
        if not self._on_cpu:
            return super()._initialize_deepspeed_inference(model)
        import deepspeed
        from lightning.pytorch.strategies.deepspeed import remove_module_hooks

        config = {"train_micro_batch_size_per_gpu": 1}
        for key in ("fp16", "bf16"):
            if key in self.config:
                config[key] = self.config[key]
        if self.zero_stage_3:
            config.update(zero_allow_untested_optimizer=self.config["zero_allow_untested_optimizer"],
                          zero_optimization=self.config["zero_optimization"])
        remove_module_hooks(model)
        self.model, _, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self._device_rank), config=config, model=model,
            optimizer=None, lr_scheduler=None, model_parameters=[], dist_init_required=False)

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """DeepSpeed writes a directory of shards; stage it and swap it in so a kill never tears it."""
        from ..checkpoint.resume import atomic_directory

        filepath = Path(self.broadcast(str(filepath)))
        with atomic_directory(filepath, self.is_global_zero, self.barrier) as staging:
            super().save_checkpoint(checkpoint, staging, storage_options)

    @property
    def offloads_optimizer(self) -> bool:
        zero = (self.config or {}).get("zero_optimization", {})
        return bool(zero.get("offload_optimizer") or zero.get("offload_param"))

    @property
    def zero_stage(self) -> int:
        return int((self.config or {}).get("zero_optimization", {}).get("stage", 0))


_registered = False


def register_strategies() -> None:
    """Point the standard DeepSpeed strategy names at RWKVDeepSpeedStrategy (same arguments)."""
    global _registered
    if _registered:
        return
    names = [n for n in StrategyRegistry.available_strategies() if n.startswith("deepspeed")]
    for name in names:
        entry = StrategyRegistry[name]
        StrategyRegistry.register(name, RWKVDeepSpeedStrategy, description=entry["description"],
                                  override=True, **entry["init_params"])
    _registered = True
