"""`python -m suite.infer_bench`: SUT speed against the bare forward (suite/inference/bench.py)."""

from suite.inference import bench

if __name__ == '__main__':
  bench.cli()
