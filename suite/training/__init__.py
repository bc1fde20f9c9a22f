"""The training core: the runner, the MLPerf clock, the jitted steps, checkpoints, optimizers, MFU."""
