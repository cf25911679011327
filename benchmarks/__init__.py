"""Benchmarks of agent_session_store against raw-driver baselines measured in the same run.

Run ``python -m benchmarks.run --help``; see benchmarks/README.md for what each figure means.
"""
