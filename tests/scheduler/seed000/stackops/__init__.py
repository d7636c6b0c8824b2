"""Stand-in for seed 000's `stackops` package, so its example runs verbatim."""
