"""The records: MLflow, where every sweep and trial is kept and read back.

Which store a command uses, its client, the writer that keeps a sweep going while the store is away, and
the names both sides agree on (tags, metrics, trial outcomes). It imports the ML core and MLflow only:
the sweep writes through it and the selection layer reads through it, and neither needs Ray to do so.
"""
