"""Choosing and shipping a model from the records: rank a sweep's trials (`best`), weigh candidates on
held-out data and build ensembles, the sweep's report, the MLflow model registry.

It reads what the sweep recorded in MLflow and writes model files; it imports the ML core, the records
(charsearch.tracking), MLflow and Optuna (the report rebuilds a study), never Ray nor the sweep's driver,
so a model can be chosen on a machine that only sees the tracking store.
"""
