"""Training: LightningModule, segment (TBPTT) loop, loss, optimizer groups and LR schedule, strategies,
checkpoint safety. Import the submodules you need; this package imports nothing on its own."""
