"""Deduplication: exact (hash of normalised text) now; fuzzy (MinHash/LSH) to come."""
