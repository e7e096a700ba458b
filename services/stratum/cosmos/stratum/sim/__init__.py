"""Trace-driven simulator of the Stratum scheduler: ``python -m cosmos.stratum.sim --help``."""
