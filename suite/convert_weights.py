"""`python -m suite.convert_weights`: the MLPerf Inference reference model's weights as a suite checkpoint
(suite/inference/convert_weights.py)."""

from suite.inference import convert_weights

if __name__ == '__main__':
  convert_weights.cli()
