"""Thin adapters for other training frameworks."""
