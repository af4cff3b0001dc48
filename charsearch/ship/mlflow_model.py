"""The code of a registered charsearch model (MLflow "models from code"): MLflow runs this file to build
the python_function model, then calls its load_context with the model file. See registry.py."""

import mlflow

from charsearch.ship.registry import CharRNNModel

mlflow.models.set_model(CharRNNModel())
