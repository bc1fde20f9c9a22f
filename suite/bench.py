"""`python -m suite.bench`: training-loop overhead and device-scaling figures (suite/tools/bench.py)."""

from suite.tools import bench

if __name__ == '__main__':
  bench.cli()
