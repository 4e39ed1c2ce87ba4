"""Evaluation of models and erasures (metrics, checks, gates)."""
