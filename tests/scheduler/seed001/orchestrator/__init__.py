"""Stand-in for seed 001's `orchestrator` package, so its example runs verbatim."""
