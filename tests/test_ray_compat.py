"""Every use of Ray's private API (charsearch/search/ray_compat.py) against the installed Ray, on a real Tune
run: a Ray upgrade that moves one of them fails here, by name, rather than in the middle of a sweep."""

import shutil
import tempfile
from pathlib import Path

import pytest
import ray
import torch
from ray import tune

from charsearch.search import ray_compat, resume


def trainable(config):
    for i in range(3):
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "n.txt").write_text(str(i))
            tune.report({"score": float(i)}, checkpoint=tune.Checkpoint.from_directory(d))


class Keep(tune.Callback):
    def __init__(self):
        self.trials = []

    def on_experiment_end(self, trials, **info):
        self.trials = list(trials)


@pytest.fixture(scope="module")
def local_ray():
    ray_compat.set_env_defaults()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_is_a_release_ray_compat_was_written_for():
    assert ray.__version__.startswith(ray_compat.RAY_VERSIONS), (
        f"Ray {ray.__version__}: check every function of charsearch/search/ray_compat.py against it, then add it")


def test_every_private_access_works_on_a_real_run(local_ray, tmp_path):
    keep = Keep()
    tuner = tune.Tuner(trainable, param_space={"x": 1}, run_config=tune.RunConfig(
        name="compat", storage_path=str(tmp_path), callbacks=[keep], verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2)))
    tuner.fit()
    (trial,) = keep.trials
    fs, path = ray_compat.trial_storage(trial)
    names = sorted(p.name for p in Path(path).glob("checkpoint_*"))
    assert fs.get_file_info(path).type.name == "Directory" and len(names) == 2

    ray_compat.forget_checkpoints(trial, lambda c: c.path.endswith(names[0]))
    kept = trial.run_metadata.checkpoint_manager._checkpoint_results
    assert [r.checkpoint.path.rsplit("/", 1)[1] for r in kept] == names[1:]
    ray_compat.point_at_checkpoint(trial, tune.Checkpoint(path=f"{path}/{names[0]}", filesystem=fs), names[0])
    assert trial.checkpoint.path.endswith(names[0])
    assert trial.storage.current_checkpoint_index == int(names[0].split("_")[-1]) + 1
    ray_compat.forget_every_checkpoint(trial)
    assert trial.checkpoint is None and not trial.run_metadata.checkpoint_manager._checkpoint_results

    restored = tune.Tuner.restore(str(tmp_path / "compat"), trainable=trainable)
    callbacks, searcher = [Keep()], object()
    ray_compat.replace_callbacks_and_searcher(restored, callbacks, searcher, 12.5)
    internal = restored._local_tuner
    assert internal.get_run_config().callbacks is callbacks
    assert internal._tune_config.search_alg is searcher and internal._tune_config.time_budget_s == 12.5


def torch_files(config):
    for i in range(3):
        with tempfile.TemporaryDirectory() as d:
            for name in ("checkpoint.pt", "model.pt"):
                torch.save({"step": i}, Path(d) / name)
            tune.report({"score": float(i)}, checkpoint=tune.Checkpoint.from_directory(d))


def test_a_resumed_trial_takes_its_newest_whole_checkpoint_or_starts_afresh(local_ray, tmp_path):
    # a kill while Tune copied a checkpoint folder to storage leaves a file cut short
    keep = Keep()
    tune.Tuner(torch_files, run_config=tune.RunConfig(
        name="whole", storage_path=str(tmp_path), callbacks=[keep], verbose=0,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2))).fit()
    (trial,) = keep.trials
    older, newest = sorted(Path(ray_compat.trial_storage(trial)[1]).glob("checkpoint_*"))
    assert trial.checkpoint.path.endswith(newest.name)

    def cut(path: Path) -> None:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    cut(newest / "model.pt")
    resume.point_at_newest(trial)
    assert trial.checkpoint.path.endswith(older.name)
    assert trial.storage.current_checkpoint_index == int(older.name.split("_")[-1]) + 1
    kept = [r.checkpoint.path for r in trial.run_metadata.checkpoint_manager._checkpoint_results]
    assert kept == [str(older)]  # once: Tune deletes a dropped checkpoint's folder, and a second delete fails
    resume.point_at_newest(trial)  # a whole checkpoint is kept
    assert trial.checkpoint.path.endswith(older.name)

    (older / "checkpoint.pt").write_bytes(b"")  # a kill just after the file was created
    resume.point_at_newest(trial)
    assert trial.checkpoint is None  # nothing whole: the trial starts from its beginning
    shutil.rmtree(older.parent)
    resume.point_at_newest(trial)  # nor where its folder is gone
    assert trial.checkpoint is None


def test_a_search_algorithm_forgets_the_trials_the_saved_state_lacks():
    from ray.tune.search import ConcurrencyLimiter, SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    limiter = ConcurrencyLimiter(OptunaSearch(space={"x": tune.uniform(0, 1)}, metric="score", mode="min"), 2)
    search_alg = SearchGenerator(limiter)
    assert limiter.suggest("saved") and limiter.suggest("lost")
    search_alg.set_state({**search_alg.get_state(), "counter": 2})
    assert limiter.suggest("third") is None  # both slots held

    ray_compat.forget_unsaved_trials(search_alg, {"saved"})
    assert search_alg.get_state()["counter"] == 1 and limiter.live_trials == {"saved"}
    assert limiter.suggest("third") is not None  # the lost trial's slot is free again


def test_searcher_knows_reads_optuna_searchs_trials():
    import optuna
    from ray.tune.search.optuna import OptunaSearch
    searcher = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0), metric="score", mode="min")
    searcher.set_search_properties("score", "min", {"x": tune.uniform(0, 1)})
    searcher.suggest("a")
    assert ray_compat.searcher_knows(searcher, "a") and not ray_compat.searcher_knows(searcher, "b")
