"""Files and their formats: the pool, its encoding, labels, query sets, router data."""
