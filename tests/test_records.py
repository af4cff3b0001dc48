"""The sweep's record beside Ray's results (charsearch.json), damaged or tampered with: --resume answers
in one line naming the record, before anything is opened, created or written."""

import json
import shutil

import mlflow
import pytest

from .conftest import one_line_error, runs, store_uri

pytestmark = pytest.mark.slow


@pytest.fixture
def finished_copy(smoke_sweep, tmp_path, monkeypatch):
    """A copy of the session's finished smoke sweep (its project, Ray results and MLflow store), worked in."""
    project = tmp_path / "copy"
    shutil.copytree(smoke_sweep[0], project)
    monkeypatch.chdir(project)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (record,) = project.glob("ray_results/smoke/*/charsearch.json")
    return project, record, store_uri(project)


def edit(record, change) -> None:
    data = json.loads(record.read_text())
    change(data)
    record.write_text(json.dumps(data))


def foreign_run(uri: str) -> str:
    """A run of another team's experiment in the same store."""
    client = mlflow.MlflowClient(uri)
    exp = client.create_experiment("other-team")
    return client.create_run(exp, tags={"charsearch.kind": "sweep"}).info.run_id


def a_trial_run(uri: str) -> str:
    return runs(uri, "smoke")[1].run_id.iloc[0]


@pytest.mark.parametrize("tamper, match", [
    (lambda r, uri: r.write_text(r.read_text()[:25]), r"damaged sweep record \(not JSON"),
    (lambda r, uri: r.write_text(""), r"damaged sweep record \(not JSON"),
    (lambda r, uri: r.write_text("[1, 2]"), r"damaged sweep record \(a JSON list, not an object\)"),
    (lambda r, uri: r.write_text("[" * 100_000 + "]" * 100_000), r"damaged sweep record \(not JSON"),
    (lambda r, uri: edit(r, lambda d: d.pop("parent_run_id")), r"parent_run_id is '\(missing\)'"),
    (lambda r, uri: edit(r, lambda d: d.update(parent_run_id=7)), r"parent_run_id is 7; expected a string"),
    (lambda r, uri: edit(r, lambda d: d.update(tracking_uri=7)), r"tracking_uri is 7; expected a string"),
    (lambda r, uri: edit(r, lambda d: d.update(parent_run_id="0" * 32)), r"MLflow run 0{32}, which .* does not hold"),
    (lambda r, uri: edit(r, lambda d: d.update(parent_run_id=foreign_run(uri))),
     r"of experiment 'other-team', which is not this sweep's parent run"),
    (lambda r, uri: edit(r, lambda d: d.update(parent_run_id=a_trial_run(uri))), r"which is not this sweep's parent"),
    (lambda r, uri: edit(r, lambda d: d.update(tracking_uri="sqlite:///elsewhere/mlflow.db")),
     r"names the tracking store sqlite:///elsewhere/mlflow.db, which does not exist"),
    (lambda r, uri: (r.parents[3] / "data/tinyshakespeare/input.txt").write_text("another corpus altogether\n" * 9000),
     r"a sweep trained on a corpus with sha256 '86c4e6aa"),
])
def test_a_damaged_or_tampered_record_is_refused_before_anything_is_opened(finished_copy, capsys, tamper, match):
    project, record, uri = finished_copy
    tamper(record, uri)
    parents, children = runs(uri, "smoke")
    line = one_line_error(capsys, "sweep", "sweeps/smoke.yaml", "--resume", match=match)
    assert "charsearch.json" in line
    after_parents, after_children = runs(uri, "smoke")
    assert after_parents.equals(parents) and after_children.equals(children)  # nothing reopened or written
    assert not (project / "elsewhere").exists()  # no store created on the record's word
    other = mlflow.MlflowClient(uri).get_experiment_by_name("other-team")
    if other is not None:
        assert len(mlflow.MlflowClient(uri).search_runs([other.experiment_id])) == 1
        assert mlflow.MlflowClient(uri).search_runs([other.experiment_id])[0].info.status == "RUNNING"


def test_an_untouched_record_of_a_finished_sweep_still_says_so(finished_copy, capsys):
    one_line_error(capsys, "sweep", "sweeps/smoke.yaml", "--resume", match="finished: nothing to resume")


def test_a_truncated_experiment_state_is_set_aside_for_the_last_complete_one(tmp_path):
    """Ray writes experiment_state-<time>.json without a rename: the newest may be cut short by a kill."""
    from charsearch.search.storage import Storage
    from charsearch.search.sweepfile import SweepConfig
    folder = tmp_path / "exp"
    folder.mkdir()
    (folder / "experiment_state-2026-01-01_00-00-00.json").write_text('{"trial_data": []}')
    (folder / "experiment_state-2026-01-02_00-00-00.json").write_text('{"trial_data": [[')
    storage = Storage(SweepConfig(path="", name="s", corpus="", storage=str(tmp_path)))
    assert storage.set_aside_damaged_states(str(folder)) == ["experiment_state-2026-01-02_00-00-00.json"]
    assert sorted(p.name for p in folder.iterdir()) == ["experiment_state-2026-01-01_00-00-00.json",
                                                        "experiment_state-2026-01-02_00-00-00.json.damaged"]
    assert storage.set_aside_damaged_states(str(folder)) == []  # the complete one stays
