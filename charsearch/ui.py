"""`charsearch ui`: MLflow's own UI, opening on the latest sweep's trials.

MLflow 3 opens on its GenAI home page, where a sweep is one name among "Recent Experiments". `charsearch
ui` runs `mlflow ui --app-name charsearch`, and this module is that app (the `mlflow.app` entry point in
pyproject.toml): MLflow's FastAPI app with one change, the bare "/" redirects to the latest sweep's runs
table in the view the sweep shared (Tracker.share_view). Every other path is MLflow's, untouched; the
sweep is looked up at each visit, so a sweep started while the UI runs is the one it opens.
"""

from __future__ import annotations

import os

from charsearch.ship.selection import latest_sweep_run
from charsearch.tracking.layout import SHARED_VIEW
from charsearch.tracking.store import client_for


def sweep_page(uri: str) -> tuple[str, str]:
    """(name, the UI's route to its runs table) of the latest sweep in the store, or ("", "") if none.
    MLflow 3 shows an experiment on its GenAI view; the trials are in the classic runs table."""
    run = latest_sweep_run(uri)
    if run is None:
        return "", ""
    exp = client_for(uri).get_experiment(run.info.experiment_id)
    route = f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
    if f"mlflow.sharedViewState.{SHARED_VIEW}" in exp.tags:
        route += f"&viewStateShareKey={SHARED_VIEW}"
    return exp.name, route


def app():
    """The ASGI app uvicorn serves (a factory, so that importing this module builds nothing)."""
    from mlflow.server import BACKEND_STORE_URI_ENV_VAR
    from mlflow.server.fastapi_app import app as mlflow_app
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import RedirectResponse

    uri = os.environ.get(BACKEND_STORE_URI_ENV_VAR)  # set by `mlflow ui`/`mlflow server` for its workers

    def route_or_none() -> str:
        """The sweep's route, or '' where the store cannot say (MLflow's own page then reports it)."""
        try:
            return sweep_page(uri)[1]
        except Exception:  # noqa: BLE001 - the landing page must never be an error of ours
            return ""

    async def landing(scope, receive, send):
        if uri and scope["type"] == "http" and scope["path"] == "/" and not scope["query_string"]:
            route = await run_in_threadpool(route_or_none)
            if route:
                # the route is a fragment, which the browser keeps and never sends: a query marks the
                # second request, which MLflow answers with its page as usual
                await RedirectResponse(f"/?sweep{route}", status_code=302)(scope, receive, send)
                return
        await mlflow_app(scope, receive, send)
    return landing
