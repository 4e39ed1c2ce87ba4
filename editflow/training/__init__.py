"""Training of the embedded model and evaluator (the ``editflow world train`` command)."""
