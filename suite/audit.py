"""`python -m suite.audit`: LoadGen's compliance tests TEST01, TEST04 and TEST05 of a vision model
(suite/inference/audit.py)."""

from suite.inference import audit

if __name__ == '__main__':
  audit.cli()
