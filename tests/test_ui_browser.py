"""The MLflow UI in a real browser: `charsearch ui` opens on the latest sweep's trials."""

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from .conftest import ROOT, cli_env, kill_session, store_uri, wait_until
from .web import free_port, wait_http

# the headers drawn narrower than their names (MLflow's default 100 px cuts "charsearch.outcome")
CUT_HEADERS = """() => [...document.querySelectorAll("[data-testid^='sort-header-']")].filter(e => {
  const cell = e.closest('.ag-header-cell').getBoundingClientRect();
  return e.parentElement.scrollWidth > e.parentElement.clientWidth || e.getBoundingClientRect().right > cell.right;
}).map(e => e.innerText)"""


@pytest.mark.slow
def test_the_ui_opens_on_the_trials_best_first_with_rounded_val_loss_and_params(browser, smoke_sweep, tmp_path):
    _, uri, _ = smoke_sweep
    # the sweep shared its view as an experiment tag; on a copy of the session's store, neither `charsearch
    # ui` nor browsing writes anything
    db = tmp_path / "mlflow.db"
    shutil.copy(Path(uri.removeprefix("sqlite:///")), db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    uri = store_uri(db, "")
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("smoke")
    parent = client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'sweep'")[0]
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                  order_by=["metrics.best_val_loss ASC"])
    assert len(children) >= 2

    port = free_port()
    log = tmp_path / "ui.log"
    p = subprocess.Popen([sys.executable, "-m", "charsearch", "ui", "--port", str(port), "--tracking-uri", uri],
                         cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=log.open("w"),
                         start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", p, timeout=120, log=log)
        link = re.search(r"latest sweep 'smoke': (\S+)", log.read_text()).group(1)
        # the bare address leads there, not to MLflow's home page
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/")
        answer = conn.getresponse()
        assert (answer.status, answer.getheader("Location")) == (302, "/?sweep" + link.split("/", 3)[3])
        conn.close()
        page = browser.new_page(viewport={"width": 1800, "height": 700})
        page.goto(f"http://127.0.0.1:{port}/")
        assert page.url == f"http://127.0.0.1:{port}/?sweep" + link.split("/", 3)[3]
        run_link = lambda run: page.locator(f"a[href$='/runs/{run.info.run_id}']")  # noqa: E731
        for child in children:  # listed at once, no parent row to unfold
            run_link(child).wait_for(timeout=90_000)
        assert run_link(parent).count() == 0
        page.get_by_role("columnheader", name=re.compile("best_val_loss")).first.wait_for(timeout=30_000)
        assert page.evaluate(CUT_HEADERS) == []

        def rows():  # the grid draws a row in parts (pinned name column, the rest): a row is all parts of one index
            texts = [" ".join(page.locator(f"[role=row][row-index='{i}']").all_inner_texts())
                     for i in range(len(children))]
            return texts if all(re.search(r"\d\.\d{4}", t) for t in texts) else None
        texts = wait_until(rows, 30, "every row's val loss drawn")
        page.screenshot(path=tmp_path / "runs.png")
        if os.environ.get("CHARSEARCH_UPDATE_DOCS"):  # refresh the docs' picture on request only
            shutil.copy(tmp_path / "runs.png", ROOT / "docs" / "mlflow-runs.png")
        (tmp_path / "runs.txt").write_text("\n".join(texts))
        assert page.locator(f"[role=row][row-index='{len(children)}']").count() == 0  # no other run listed
        # the outcome and the first searched parameter come right after the val loss, before MLflow's own
        # columns: in view at 1600 px even with MLflow's side panel open (it takes a quarter)
        page.set_viewport_size({"width": 1600, "height": 700})
        for name in ("charsearch.outcome", "rnn_size"):
            header = page.get_by_role("columnheader", name=re.compile(re.escape(name))).first
            wait_until(lambda h=header: (b := h.bounding_box()) and b["x"] + b["width"] <= 1200, 10,
                       f"the {name} column in view at 1600 px")
        # one row per trial, best first, each with its best val loss to 4 decimals
        for text, child in zip(texts, children):
            assert child.info.run_name in text, texts
            assert f" {child.data.metrics['best_val_loss']:.4f} " in f" {text} ".replace("\n", " "), text
        page.close()
        assert hashlib.sha256(db.read_bytes()).hexdigest() == before  # nothing written to the store
    finally:
        kill_session(p.pid)
        p.wait()
