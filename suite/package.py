"""`python -m suite.package`: a checked MLPerf submission package (suite/results/package.py)."""

from suite.results import package

if __name__ == '__main__':
  package.cli()
