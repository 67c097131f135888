"""Performance of the target against the source of truth: timings, plans, insights."""
