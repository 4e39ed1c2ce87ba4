"""The MLflow side of editflow: versioned patches, metrics, grids, model cards, aliases.

The only place that imports mlflow; the core (``editflow``) never does.
"""
