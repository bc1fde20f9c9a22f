"""What is done with finished runs: the N-run score, submission packages, reports, sweeps."""
