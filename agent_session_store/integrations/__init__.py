"""Backends for agent frameworks."""
