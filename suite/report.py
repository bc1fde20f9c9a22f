"""`python -m suite.report`: plots and a markdown report of run sets (suite/results/report.py)."""

from suite.results import report

if __name__ == '__main__':
  report.cli()
