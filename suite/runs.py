"""`python -m suite.runs`: N seeded runs of a workload and their MLPerf score (suite/results/runs.py)."""

from suite.results import runs

if __name__ == '__main__':
  runs.cli()
