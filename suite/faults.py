"""`python -m suite.faults`: injects faults into tiny runs and checks that each recovers (suite/tools/faults.py)."""

from suite.tools import faults

if __name__ == '__main__':
  faults.cli()
