"""Developer tools: the overhead/scaling benchmark and the fault-injection drill."""
