"""Helpers the tests share (importable because tests/conftest.py puts tests/ on sys.path)."""
