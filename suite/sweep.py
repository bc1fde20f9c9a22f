"""`python -m suite.sweep`: a hyperparameter grid of run sets, recorded in SQLite (suite/results/sweep.py)."""

from suite.results import sweep

if __name__ == '__main__':
  sweep.cli()
