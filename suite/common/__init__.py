"""What every part of the suite shares: config, registry, mesh, jax.distributed, MLPerf log, run files, errors."""
