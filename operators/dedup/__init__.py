"""Deduplication, as global stages: duplicate ids, exact (hash of normalised text), fuzzy (MinHash/LSH)."""
