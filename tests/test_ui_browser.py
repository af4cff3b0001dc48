"""The MLflow UI in a real browser: the smoke sweep's runs are browsable, as the README promises."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .conftest import cli_env, kill_session
from .web import free_port, wait_http


@pytest.mark.slow
def test_the_sweep_experiment_page_lists_its_parent_and_child_runs(browser, smoke_sweep, tmp_path):
    _, uri, _ = smoke_sweep
    db = Path(uri.removeprefix("sqlite:///"))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    parent = client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'sweep'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) >= 2

    port = free_port()
    log = tmp_path / "ui.log"
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "ui", "--port", str(port), "--tracking-uri", uri],
                         cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"),
                         start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", p, timeout=120, log=log)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        # the runs table of the experiment; MLflow 3 opens experiments on its GenAI view unless asked for this one
        page.goto(f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning")
        run_link = lambda run: page.locator(f"a[href$='/runs/{run.info.run_id}']")  # noqa: E731
        parent_link = run_link(parent)
        parent_link.wait_for(timeout=90_000)
        assert parent_link.inner_text() == parent.info.run_name
        # child runs are listed under their parent, folded: unfold them with the parent row's button
        page.locator("[role=gridcell]", has=parent_link).get_by_role("button").click()
        for child in children:
            link = run_link(child)
            link.wait_for(timeout=30_000)
            assert link.inner_text() == child.info.run_name
        page.close()
    finally:
        kill_session(p.pid)
        p.wait()
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # browsing wrote nothing to the shared store
