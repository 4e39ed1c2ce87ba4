"""Model components, loading and the evaluator."""
