"""Stand-in for seed 001's `orchestrator.core`."""
