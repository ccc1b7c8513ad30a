"""Reusable test helpers: tiny random models and their processors, built locally (no downloads)."""
