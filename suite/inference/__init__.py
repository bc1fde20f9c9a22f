"""Inference through MLPerf LoadGen: the SUT, the QSL, LoadGen settings, accuracy scoring, its benchmark."""
