"""--resume: what may be continued, and the trials' checkpoints made consistent before it continues.

A resumed sweep continues the latest run of the sweep as it was started: Tune restores its search
space, searcher and scheduler from the saved experiment. So the sweep file is compared with the one the
record holds, and a change other than more time (or another Ray address) is refused in one line that
names the keys; a sweep that finished is not reopened (its FINISHED record stays as it is); and the
tracking store is the one the sweep recorded to.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.fs
from mlflow.exceptions import MlflowException
from ray import tune

from charsearch.core.errors import UsageError, excerpt
from charsearch.search import ray_compat
from charsearch.search.storage import RECORD_FILE, Storage
from charsearch.search.sweepfile import SweepConfig, parse_sweep
from charsearch.tracking.store import SOURCES, requested_uri, resolve_uri

# what a resumed sweep may change (it continues its own study: a warm start does not apply)
RESUMABLE = {"budget.sweep_time", "ray.address", "tracking.uri", "search.warm_start"}


@dataclass
class ResumePoint:
    exp_dir: str  # the Ray experiment folder
    record: dict  # its charsearch.json
    tracking_uri: str
    notes: list  # what was mended before Tune reads the folder, a line each
    restorable: bool = True  # False: stopped before Ray saved its trials' state; the sweep starts again in its run


def recorded_sweep(sweep: SweepConfig) -> SweepConfig | None:
    """The sweep as its latest run recorded it (an auto-sized sweep resumes with the space it was sized
    to, not a new calibration), or None when there is none."""
    storage = Storage(sweep)
    dirs = storage.experiment_dirs(sweep.name)
    saved = storage.read_record(dirs[-1]).get("sweep") if dirs else None
    return parse_sweep(saved, sweep.path) if saved else None


def resume_point(sweep: SweepConfig, storage: Storage, uri_flag: str | None, corpus_sha256: str) -> ResumePoint:
    """The run to continue, or one UsageError saying why there is none. The record is checked against what
    it names before anything is opened or created: its store exists, its run is this sweep's parent run
    for this experiment folder, and the corpus is the one that run trained on."""
    where = sweep.path or sweep.name
    dirs = storage.experiment_dirs(sweep.name)
    if not dirs:
        raise UsageError(f"{where}: nothing to resume under {storage.show(storage.root)}/{sweep.name} (run the sweep "
                         f"without --resume first)")
    record = storage.read_record(dirs[-1])
    uri = recorded_uri(record, uri_flag, where)
    status = parent_status(uri, record, sweep.name, dirs[-1], corpus_sha256,
                           f"{storage.show(dirs[-1])}/{RECORD_FILE}")
    if status == "FINISHED":
        raise UsageError(f"{where}: its latest run ({storage.show(dirs[-1])}, MLflow run {record['parent_run_id']}) "
                         f"finished: nothing to resume; run it without --resume to start a new sweep")
    changed = changed_keys(record.get("sweep"), sweep.to_file())
    if changed:
        raise UsageError(f"{where}: changed since the sweep started ({'; '.join(changed[:4])}"
                         f"{' ...' if len(changed) > 4 else ''}): --resume continues the sweep as it started; undo "
                         f"the change, or run without --resume to start a new sweep")
    damaged = storage.set_aside_damaged_states(dirs[-1])
    restorable = tune.Tuner.can_restore(dirs[-1], storage_filesystem=storage.ray_fs) and storage.has_state(dirs[-1])
    kept = "resuming from the state saved before it" if restorable else "no earlier state is kept"
    notes = [f"note: {name} was truncated (a kill while Ray wrote it): set aside; {kept}" for name in damaged]
    if not restorable:
        notes.append(f"note: {storage.show(dirs[-1])}: the sweep was stopped before Ray saved the state of its "
                     f"trials: it starts again, in the same MLflow run")
    return ResumePoint(dirs[-1], record, uri, notes, restorable)


def recorded_uri(record: dict, uri_flag: str | None, where: str) -> str:
    """The store the sweep recorded to; another one named by --tracking-uri or $MLFLOW_TRACKING_URI is
    refused (the resumed trials would land in a store that lacks the sweep's parent run)."""
    asked, source = requested_uri(uri_flag)
    saved = record["tracking_uri"]
    if source in SOURCES[:2] and asked != saved:
        raise UsageError(f"{where}: the sweep records to {saved}, but {source} names {asked}; resume it with its own "
                         f"store (drop {source}, or set it to {saved})")
    return saved


def changed_keys(saved: dict | None, now: dict) -> list[str]:
    """'section.key: old -> new' for each key of the sweep file that differs (beyond RESUMABLE)."""
    if not saved:  # a record without its sweep: nothing to compare with
        return []
    a, b = _flat(saved), _flat(now)
    keys = sorted(k for k in a.keys() | b.keys() if k not in RESUMABLE and a.get(k) != b.get(k))
    return [f"{k}: {excerpt(a.get(k, '(none)'))} -> {excerpt(b.get(k, '(none)'))}" for k in keys]


def _flat(sweep_file: dict) -> dict:
    out = {}
    for section, values in sweep_file.items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
        else:
            out[section] = values
    return out


def parent_status(uri: str, record: dict, experiment: str, exp_dir: str, corpus_sha256: str, record_path: str) -> str:
    """The status of the parent run the record names, once it is shown to be this sweep's: in the store the
    record names (which must exist: looking never creates one), in the sweep's experiment, tagged as the
    parent of this experiment folder, trained on this corpus. Anything else is one line naming the record."""
    from charsearch.tracking.layout import KIND_TAG, RAY_EXPERIMENT_TAG
    from charsearch.tracking.store import client_for, existing_store
    run_id = record["parent_run_id"]
    bad = f"{record_path}: the sweep's record names"
    if not existing_store(uri):
        raise UsageError(f"{bad} the tracking store {uri}, which does not exist; resume where the sweep was started, "
                         f"or run it without --resume to start a new one")
    client = client_for(resolve_uri(uri))
    try:
        run = client.get_run(run_id)
        exp_name = client.get_experiment(run.info.experiment_id).name
    except MlflowException:
        raise UsageError(f"{bad} MLflow run {run_id}, which {uri} does not hold; restore the record, or run the "
                         f"sweep without --resume to start a new one") from None
    tags = run.data.tags
    folder = tags.get(RAY_EXPERIMENT_TAG, "").rstrip("/").split("/")[-2:]
    if exp_name != experiment or tags.get(KIND_TAG) != "sweep" or folder != exp_dir.rstrip("/").split("/")[-2:]:
        raise UsageError(f"{bad} MLflow run {run_id} of experiment {excerpt(exp_name)}, which is not this sweep's "
                         f"parent run ({experiment!r}, {'/'.join(exp_dir.split('/')[-2:])}); --resume writes only "
                         f"into the sweep's own run: restore the record, or run without --resume")
    recorded_hash = run.data.params.get("corpus_sha256")
    if recorded_hash != corpus_sha256:
        raise UsageError(f"{bad} a sweep trained on a corpus with sha256 {excerpt(recorded_hash)}; the corpus now "
                         f"has {corpus_sha256[:16]}...: resume it with the corpus it started on, or run without "
                         f"--resume to start a new sweep")
    return run.info.status


class ResumeFromExisting(tune.Callback):
    """A resumed sweep continues from what Tune saved, made consistent before the first trial starts.

    Each trial continues from the newest checkpoint it has in storage. Tune deletes a trial's older
    checkpoints as it registers new ones (num_to_keep) and saves its experiment state only now and then,
    so a driver killed in between leaves a state naming a checkpoint already deleted, and Tune would fail
    that trial ("Could not recover from checkpoint"); such a trial is pointed at its newest whole
    checkpoint folder (a kill while Tune copied one to storage leaves it partial), or starts afresh where
    it has none.

    The search algorithm counts the trials the saved state holds. Tune copies its trials' state and the
    search algorithm's to storage as separate files, in the background; a driver killed between the two
    leaves a search algorithm that counts a trial the resumed sweep does not have (and holds a concurrency
    slot for it), so the sweep would run one trial fewer than num_samples, one trial at a time short."""

    def __init__(self, search_alg):
        self.search_alg, self.done = search_alg, False

    def on_step_begin(self, iteration, trials, **info):
        if self.done:
            return
        self.done = True
        ray_compat.forget_unsaved_trials(self.search_alg, {trial.trial_id for trial in trials})
        for trial in trials:
            if trial.status != "TERMINATED" and trial.checkpoint is not None:
                point_at_newest(trial)


ZIP_END_BYTES, ZIP_END_SIGNATURE = 22, b"PK\x05\x06"


def _unusable(checkpoint) -> bool:
    return not _whole(checkpoint.filesystem, checkpoint.path)


def _whole(fs: pyarrow.fs.FileSystem, folder: str) -> bool:
    """Whether a checkpoint folder holds both files, each a whole archive: a kill while Tune copied the folder
    to storage leaves one missing or cut short. A torch file is a zip whose end-of-directory record, written
    last, is its last 22 bytes (torch writes no archive comment)."""
    for name in ("checkpoint.pt", "model.pt"):
        info = fs.get_file_info(f"{folder}/{name}")
        if info.type != pyarrow.fs.FileType.File or info.size < ZIP_END_BYTES:
            return False
        with fs.open_input_file(info.path) as stream:
            stream.seek(info.size - ZIP_END_BYTES)
            if stream.read(4) != ZIP_END_SIGNATURE:
                return False
    return True


def point_at_newest(trial) -> None:
    """Point a trial at its newest whole checkpoint in storage, or, where it has none, at its beginning."""
    ray_compat.forget_checkpoints(trial, _unusable)
    if trial.checkpoint is not None and not _unusable(trial.checkpoint):
        return
    fs, root = ray_compat.trial_storage(trial)
    names = sorted(i.base_name for i in fs.get_file_info(pyarrow.fs.FileSelector(root, allow_not_found=True))
                   if i.base_name.startswith("checkpoint_") and _whole(fs, i.path))
    if names:
        ray_compat.point_at_checkpoint(trial, tune.Checkpoint(path=f"{root}/{names[-1]}", filesystem=fs), names[-1])
    else:
        ray_compat.forget_every_checkpoint(trial)
