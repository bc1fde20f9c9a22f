"""`python -m suite.infer_accuracy`: scores a LoadGen accuracy log (suite/inference/accuracy.py)."""

from suite.inference import accuracy

if __name__ == '__main__':
  accuracy.cli()
