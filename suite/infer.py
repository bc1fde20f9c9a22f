"""`python -m suite.infer`: a LoadGen test of a model in one of the four scenarios (suite/inference/run.py)."""

from suite.inference import run

if __name__ == '__main__':
  run.cli()
