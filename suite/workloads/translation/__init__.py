"""MLPerf translation: the `transformer` and `gnmt` workloads (one module each) on the shared pipeline and loss of
`common.py`."""
