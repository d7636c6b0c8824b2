"""Stand-in for seed 000's `stackops.utils`."""
