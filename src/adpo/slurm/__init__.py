"""SLURM helpers: a single-node cluster on localhost (tests, trying sweeps out) and the sweep dry-run launcher."""
