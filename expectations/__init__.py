"""Data-quality gates: Great Expectations suites per lakehouse table (`suites`) and the
gate that runs them before a partition is published (`gate`)."""
