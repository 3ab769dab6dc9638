"""The builders of the tables scripts/make_tables.py writes into README.md and docs/: one module per page."""
