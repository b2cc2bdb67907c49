"""Benchmarks (``make bench``): per-frame cost of the ingest pipeline, measured in one run."""
