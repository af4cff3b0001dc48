"""Commands of sweeps and what reads them from MLflow: sweep, best, report, ui."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from charsearch.cli.common import command, positive
from charsearch.core.errors import UsageError
from charsearch.core.units import loss_text

# --- sweep --------------------------------------------------------------------------------------


def add_sweep(sub) -> None:
    w = command(sub, "sweep", cmd_sweep, "search hyperparameters: Optuna in Ray Tune, ASHA, MLflow")
    w.add_argument("file", nargs="?", default=None, help="sweep file, e.g. sweeps/smoke.yaml (none with --data)")
    w.add_argument("--data", default=None, help="corpus of an automatically sized sweep (no sweep file): the "
                                                "machine is measured and the search sized to it and to --time")
    w.add_argument("--time", default=None, metavar="DURATION",
                   help="wall-clock budget of the whole sweep: seconds, or with s/m/h (600, 10m, 1h)")
    w.add_argument("--dry-run", action="store_true", help="print the resolved sweep and trial resources, then exit")
    w.add_argument("--resume", action="store_true", help="continue the last interrupted run of this sweep")
    w.add_argument("--address", default=None, help="Ray cluster to run on (default: $RAY_ADDRESS or a local Ray)")
    w.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                        "the sweep file's, or sqlite:///mlruns/mlflow.db)")
    w.add_argument("--num-samples", type=int, default=None, help="override search.num_samples")
    w.add_argument("--sweep-time", type=float, default=None, help="override budget.sweep_time (seconds)")
    w.add_argument("--test-frac", type=float, default=None, metavar="F",
                   help="hold out the corpus's last F as a test split that selection never sees (override "
                        "data.test_frac; default 0: the val split stays the last 10%%, as published results use)")
    w.add_argument("--no-warm-start", action="store_true",
                   help="start the search afresh: an automatically sized sweep otherwise begins from the last "
                        "finished sweep of the same corpus and budget in the tracking store (its best "
                        "configuration first, its trials known to the sampler); a sweep file asks for that with "
                        "search.warm_start: true")
    w.add_argument("--search", default="auto", metavar="{auto,always,never}",
                   help="an automatically sized sweep: auto (default) searches where the plan says the search "
                        "can compare enough configurations to pay for itself, else trains its prior on the "
                        "sweep's schedule, twice at once with seeds apart on a CPU with two slots or more (at two "
                        "dropouts where it would memorise the corpus; best --export takes the better, --ensemble 2 "
                        "mixes them; the dry run says which, and why); always or never "
                        "decide it")
    w.add_argument("--dashboard", action="store_true", help="start the Ray dashboard")
    w.add_argument("--calibration", metavar="FILE", default=None,
                   help="an auto sweep's calibration (JSON, e.g. the calibration.json artifact of an earlier auto "
                        "sweep on the same kind of machine) instead of measuring this one")


def cmd_sweep(args) -> int:
    import time
    started = time.time()
    sweep, plan = sweep_to_run(args)
    plan_text = plan.describe() if plan else ""
    if args.dry_run:
        dry_run(sweep, plan_text, args.address)
        return 0
    if plan_text:
        print(plan_text, file=sys.stderr)
    from charsearch.search import run
    files = {"calibration.json": json.dumps(plan.calibration.to_dict(), indent=1)} if plan else {}
    outcome = run(sweep, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri,
                  dashboard=args.dashboard, started=started, plan_text=plan_text, files=files,
                  expected_rates=plan.calibration.rates if plan else None,
                  whole_rates=plan.calibration.whole if plan else None)
    from charsearch.search.autosize import members_of
    return report_outcome(sweep, outcome, args, members_of(plan) if plan and not plan.searching else 1)


def sweep_to_run(args):
    """(sweep, plan or None) as the command line asks for it (search.prepare.prepare_sweep)."""
    from charsearch.search.prepare import prepare_sweep
    return prepare_sweep(args.file, args.data, args.time, resume=args.resume, no_warm_start=args.no_warm_start,
                         num_samples=args.num_samples, sweep_time=args.sweep_time, test_frac=args.test_frac,
                         calibration=args.calibration, address=args.address, search=args.search)


def dry_run(sweep, plan_text: str, address: str | None) -> None:
    """The resolved sweep as a sweep file, the plan of an auto sweep, and what each trial asks for."""
    import torch
    import yaml
    gpus = torch.cuda.device_count()
    from charsearch.search.sweepfile import checked_corpus
    corpus = checked_corpus(sweep)  # the sweep's own checks of its corpus and splits, before anything is printed
    sizes = [len(ids) for ids in corpus.split(sweep.train_frac, sweep.val_frac)]
    print(yaml.safe_dump(sweep.to_file(), sort_keys=False).rstrip())
    if plan_text:
        print(plan_text)
    print(f"# splits: train {sweep.train_frac:g}, val {sweep.val_frac:g}, test {sweep.test_frac:g} of the corpus "
          f"({sizes[0]:,} / {sizes[1]:,} / {sizes[2]:,} characters), in that order" + ("" if sweep.test_frac else " (no test split by default: the val split stays the last 10%, "
                           "as nanoGPT's shakespeare_char, so val figures compare with published ones; --test-frac "
                           "holds out a test split that selection never sees, for an unbiased score)"))
    if sweep.gpu == "auto":
        from charsearch.core.data import load_corpus
        from charsearch.search.resources import corners, gpu_share, step_work
        vocab = len(load_corpus(sweep.corpus, sweep.min_freq).vocab)
        shares = sorted({gpu_share(step_work(sweep, p, vocab)) for p in corners(sweep)})
        gpu = f"auto: {shares[0]:g} to {shares[-1]:g} of a GPU by model size" if gpus else "0 (no GPU here)"
    else:
        gpu = f"{sweep.gpu:g}" + (" -> no GPU here: trials would run on CPU" if sweep.gpu > 0 and not gpus
                                  and not (address or sweep.address) else "")
    print(f"# resources per trial: cpu {sweep.cpu:g}, gpu {gpu}; GPUs visible here: {gpus}")


def report_outcome(sweep, outcome, args, members: int = 1) -> int:
    from charsearch.tracking.layout import describe_counts
    print(f"sweep {sweep.name}: {describe_counts(outcome.counts)} in {outcome.wall_s / 60:.1f} min")
    for trial_id, error in list((outcome.errors or {}).items())[:3]:  # the full tracebacks are in MLflow
        print(f"trial {trial_id} failed: {error}", file=sys.stderr)
    if len(outcome.errors or {}) > 3:
        print(f"... and {len(outcome.errors) - 3} more failed trials (their errors: tag 'error' of their MLflow runs)",
              file=sys.stderr)
    if outcome.finish and outcome.finish.from_start:
        print(f"no trial reported in the search: its first trial {', '.join(outcome.finish.trials)} trained from the "
              f"start for {outcome.finish.seconds:.0f} s: val {outcome.finish.best[0]:.4f}")
    elif outcome.finish:
        print(f"the search's best trial {', '.join(outcome.finish.trials)} trained on for "
              f"{outcome.finish.seconds:.0f} s: val {outcome.finish.best[0]:.4f}")
    if outcome.best_val_loss is not None:
        print(f"best val loss {loss_text(outcome.best_val_loss)}, trial {outcome.best_trial}: "
              f"{json.dumps(outcome.best_config)}")
        from charsearch.core.data import load_corpus, unigram_note
        note = unigram_note(outcome.best_val_loss, load_corpus(sweep.corpus, sweep.min_freq), sweep.train_frac,
                            sweep.val_frac)
        if note:
            print(note, file=sys.stderr)
    print(f"MLflow: experiment {sweep.name!r}, parent run {outcome.parent_run_id}; Ray results: {outcome.experiment_dir}")
    again = f"charsearch sweep {args.file}" if args.file else f"charsearch sweep --data {args.data} --time {args.time}"
    if outcome.interrupted:
        print(f"interrupted: continue with  {again} --resume", file=sys.stderr)
        return 130
    if outcome.best_val_loss is None:
        print(f"charsearch sweep: error: no trial reported a val loss: {describe_counts(outcome.counts)}; "
              f"give the sweep more time, or smaller models", file=sys.stderr)
        return 1
    mix = f"; its {members} members mixed: --ensemble {members}" if members > 1 else ""
    print(f"next: charsearch best --export model.pt{mix}   (or charsearch ui to browse)")
    return 0


# --- best, report, ui ---------------------------------------------------------------------------


def add_best(sub) -> None:
    b = command(sub, "best", cmd_best, "rank a sweep's trials from MLflow; --export writes the best model file")
    b.add_argument("--experiment", default=None, help="sweep name (default: the most recent sweep)")
    b.add_argument("--top", type=int, default=10, help="rows to show (default: %(default)s)")
    b.add_argument("--export", metavar="PATH", default=None, help="write the best trial's model file here")
    b.add_argument("--ensemble", metavar="K", type=int, default=None,
                   help="export an ensemble: greedy selection with replacement over the top K trials' models on "
                        "val, written as one model file (members must share the vocabulary)")
    b.add_argument("--max-params", metavar="N", type=int, default=None, help="export the lowest-val model with at "
                                                                             "most N parameters")
    b.add_argument("--max-size", metavar="SIZE", default=None, help="... whose model file is at most SIZE (5MB, 500kB)")
    b.add_argument("--min-chars-per-sec", metavar="R", type=float, default=None,
                   help="... that samples at least R chars/s as one stream on this machine's CPU")
    b.add_argument("--register", metavar="NAME", default=None,
                   help="log the best trial's model to MLflow (python_function) and register a new version of NAME")
    b.add_argument("--tracking-uri", default=None)


def cmd_best(args) -> None:
    import pandas as pd

    from charsearch.ship import selection
    from charsearch.ship.best import export, held_out_view, pick
    from charsearch.ship.registry import check_name
    if args.register is not None:
        check_name(args.register)
    constraints = constraints_of(args)
    if args.export:
        from charsearch.core.files import write_target
        write_target(args.export)
    elif args.ensemble is not None or constraints:
        raise UsageError("--ensemble, --max-params, --max-size and --min-chars-per-sec choose what --export writes; "
                         "give --export PATH too")
    positive("--top", args.top)
    from charsearch.tracking.store import recorded_store
    uri = recorded_store(args.tracking_uri)
    name, df = selection.trials(uri, args.experiment)
    df = df.reindex(columns=sorted(df.columns))  # MLflow lists params in no fixed order: the table's stay put
    with tempfile.TemporaryDirectory() as tmp:
        held = held_out_view(uri, name, df, Path(tmp), args.top, need_val=args.ensemble is not None)
        chosen = pick(uri, df, name, constraints, held, Path(tmp), args.ensemble) if args.export else None
        with pd.option_context("display.max_columns", 30, "display.width", 200):
            counts = selection.sweep_counts(uri, name)
            print(f"experiment {name!r}: {len(df)} trial{'s' * (len(df) != 1)}, best first"
                  + (f"; its latest sweep: {counts}" if counts else ""))
            print(held.table.to_string())
        if held.bias:
            print(held.bias)
        if chosen:
            mf, what = chosen
            speed = export(uri, name, mf, args.export, measure_speed=bool(constraints or args.ensemble))
            test = mf.summary.get("test_loss")
            print(f"exported {what}{f', test {test:.4f}' if test is not None else ''}"
                  f"{f', {speed:,.0f} chars/s sampling one stream here' if speed else ''} to {args.export} (CPU "
                  f"float32); sample with: charsearch sample {args.export}")
    if args.register is not None:
        register(uri, df, name, args.register, Path(args.export) if args.export else None)


def constraints_of(args):
    from charsearch.ship.candidates import Constraints, parse_size
    if args.max_params is not None:
        positive("--max-params", args.max_params)
    if args.min_chars_per_sec is not None and not args.min_chars_per_sec > 0:
        raise UsageError(f"--min-chars-per-sec must be > 0; got {args.min_chars_per_sec}")
    if args.ensemble is not None:
        positive("--ensemble", args.ensemble)
    return Constraints(args.max_params, parse_size(args.max_size) if args.max_size else None, args.min_chars_per_sec)


def register(uri: str, df, experiment: str, name: str, exported: Path | None) -> None:
    from shlex import quote

    from charsearch.ship.registry import register_best
    v = register_best(uri, df, experiment, name, exported)
    print(f"registered {v.name} version {v.version}: trial {v.tags['trial_id']} "
          f"(val {float(v.tags['val_loss']):.4f} nats/char, MLflow run {v.run_id}); serve it with: "
          f"MLFLOW_TRACKING_URI={quote(uri)} "
          f"mlflow models serve -m {quote(f'models:/{v.name}/{v.version}')} --env-manager local")


def add_report(sub) -> None:
    r = command(sub, "report", cmd_report, "plots, summary and memorisation check of a sweep, from MLflow")
    r.add_argument("--experiment", default=None, help="sweep name (default: the most recent sweep)")
    r.add_argument("--run", default=None, metavar="RUN_ID",
                   help="the sweep's parent run, when it ran more than once (default: its latest run)")
    r.add_argument("--out", default=None, metavar="DIR", help="folder for the files (default: report/<experiment>)")
    r.add_argument("--top", type=int, default=10, help="trials whose learning curves are drawn (default: %(default)s)")
    r.add_argument("--storage", default=None, metavar="URL", help="Optuna storage for the rebuilt study (default: "
                                                                   "optuna.db beside an SQLite tracking store)")
    r.add_argument("--tracking-uri", default=None)


def cmd_report(args) -> None:
    from charsearch.ship import report
    from charsearch.tracking.store import recorded_store
    uri = recorded_store(args.tracking_uri)
    positive("--top", args.top)
    r = report.run(uri, args.experiment, args.run, args.out, args.storage, args.top)
    print(r.summary)
    print(f"report: {len(r.files)} files in {r.out}/, logged to MLflow run {r.parent_run_id} under "
          f"{report.ARTIFACT_DIR}/ (charsearch ui to browse)")
    print(f"Optuna study {r.study_name!r} in {r.storage}; browse it with: optuna-dashboard {r.storage}")


def add_ui(sub) -> None:
    u = command(sub, "ui", cmd_ui, "serve the MLflow UI for the project's store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    u.add_argument("--tracking-uri", default=None)


def cmd_ui(args) -> None:
    import os

    from charsearch.tracking.store import resolve_uri
    from charsearch.ui import sweep_page
    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise UsageError(f"{uri} is a tracking server: open it in a browser, it serves the UI itself")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # lean: no job runner workers
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1", "--app-name", "charsearch"]
    base = f"http://{args.host}:{args.port}"
    name, route = sweep_page(uri)
    opens = f"the latest sweep's trials ('{name}')" if name else "MLflow's home page (no sweep recorded yet)"
    print(f"MLflow UI for {uri} at {base}/ : it opens on {opens} (Ctrl-C stops it)", file=sys.stderr)
    if route:
        print(f"latest sweep '{name}': {base}/{route}", file=sys.stderr)
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


COMMANDS = (add_sweep, add_best, add_report, add_ui)
