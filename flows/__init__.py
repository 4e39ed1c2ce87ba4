"""Prefect flows that chain inversion -> edit -> fine-tune -> gates -> register.

Only this package and ``registry`` import Prefect / MLflow; the core (``editflow``) never does.
"""
