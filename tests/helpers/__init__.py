"""Helpers the test suite leans on: tiny configs and real multi-process runs."""
