"""Shared test helpers; the embedded platform fixture lives in tests/integration/conftest.py."""
