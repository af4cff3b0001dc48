"""The `charsearch` command: parse, call, print. Heavy libraries are imported by the commands that
need them, so `charsearch sample` starts without Ray or MLflow."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields

from .config import FIELDS, ConfigError, TrainConfig, field_type
from .errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (plus a pointer to --help) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_train_options(p: argparse.ArgumentParser) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        group = groups.setdefault(f.metadata["group"], p.add_argument_group(f.metadata["group"] + " options"))
        kind = field_type(f.name)
        help_text = f.metadata["help"] + ("" if kind is bool else " (default: %(default)s)")
        if kind is bool:
            group.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
        else:
            group.add_argument(flag(f.name), type=kind, default=f.default, choices=f.metadata["choices"],
                               metavar=None if f.metadata["choices"] else f.name.upper(), help=help_text)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{name: getattr(args, name) for name in FIELDS})
    try:
        return cfg.validate()
    except ConfigError as e:
        raise UsageError(f"{flag(e.field)}: {e.problem}") from None


# ---------------------------------------------------------------------------------------------
# commands of the ML core


def cmd_data_fetch(args) -> None:
    from .data import fetch
    path = fetch(args.name, args.data_root, args.source)
    print(f"{path}: {path.stat().st_size:,} bytes, sha256 verified")


def cmd_data_info(args) -> None:
    import numpy as np
    from .data import load_corpus, split_bounds
    corpus = load_corpus(args.path, args.min_freq, args.data_root)
    n = len(corpus.ids)
    a, b = split_bounds(n, args.train_frac, args.val_frac)
    counts = np.bincount(np.asarray(corpus.ids), minlength=len(corpus.vocab)).astype(np.float64)
    p = counts[counts > 0] / n
    entropy = float(-(p * np.log(p)).sum())
    preview = "".join(corpus.vocab.chars[:80]).encode("unicode_escape").decode("ascii")
    print(f"corpus     {corpus.path} ({n:,} characters, sha256 {corpus.sha256[:16]}...)")
    print(f"vocabulary {len(corpus.vocab)} characters{' incl. unknown symbol' if corpus.vocab.unk is not None else ''}"
          f", stored as {corpus.vocab.dtype}: {preview}")
    print(f"splits     train {a:,} / val {b - a:,} / test {n - b:,} characters")
    print(f"unigram    entropy {entropy:.4f} nats/char ({entropy / math.log(2):.3f} bits): a model must beat this")


def cmd_train(args) -> None:
    from .data import load_corpus
    from .memory import HEADROOM, admissible_bytes, check_training_size
    from .train import resolve_device, train
    cfg = train_config_from_args(args)
    if cfg.init_from:  # a resumed run takes the checkpoint's architecture: checked against its weights
        from .artifact import load
        load(cfg.init_from)
    else:
        vocab = len(load_corpus(cfg.data, cfg.min_freq).vocab)
        check_training_size(cfg, vocab, admissible_bytes(resolve_device(cfg.device)),
                            limit_words=f"available now ({HEADROOM:.0%} of the memory free)")
    result = train(cfg, progress=not args.quiet)
    print(f"best val loss {result.best_val_loss:.4f} nats/char ({result.best_val_loss / math.log(2):.4f} bits/char) "
          f"after {result.epochs:.2f} epochs ({result.stop_reason}); {result.chars_per_sec:,.0f} chars/s")
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"export it with:  charsearch export {result.best_checkpoint} --out model.pt")


def cmd_export(args) -> None:
    from .artifact import export
    from .files import write_target
    write_target(args.out)
    mf = export(args.checkpoint, args.out)
    val = mf.summary.get("val_loss")
    print(f"{args.out}: {mf.config['model']} {mf.config['num_layers']}x{mf.config['rnn_size']}, "
          f"{mf.num_params():,} parameters, vocab {len(mf.vocab)}"
          f"{f', val loss {val:.4f}' if isinstance(val, float) else ''} (CPU float32)")


def cmd_sample(args) -> None:
    from . import artifact
    from .sample import Sampler, SampleOptions
    from .train import resolve_device
    opts = SampleOptions(args.primetext, args.length, args.temperature, args.top_k, args.argmax, args.seed,
                         args.num_samples, args.stop).validate()
    device = resolve_device(args.device)
    if device.type == "cpu":
        import torch
        torch.backends.mkldnn.enabled = False  # its LSTM is ~10x slower at batch 1; small products ~15% slower
    sampler = Sampler(artifact.load(args.model), device)
    out = sys.stdout
    if opts.num_samples == 1:  # stream characters as they come
        for step in sampler.stream(opts):
            out.write(step[0])
            out.flush()
        out.write("\n")
        return
    for i, text in enumerate(sampler.generate(opts)):
        out.write(f"{'' if i == 0 else chr(10)}--- sample {i + 1} ---\n{text}\n")
    out.flush()


def cmd_eval(args) -> None:
    from . import artifact
    from .data import encode_with, resolve_path, split_bounds_apply
    from .train import Evaluator, resolve_device
    mf = artifact.load(args.model)
    path = resolve_path(args.data)
    ids = encode_with(path, mf.vocab)
    train_frac = args.train_frac if args.train_frac is not None else mf.summary.get("train_frac", 0.9)
    val_frac = args.val_frac if args.val_frac is not None else mf.summary.get("val_frac", 0.1)
    if args.split != "all":
        _, val, test = split_bounds_apply(ids, train_frac, val_frac)
        ids = val if args.split == "val" else test
        if len(ids) < 2:
            raise UsageError(f"{path}: the {args.split} split is empty with train_frac {train_frac} + val_frac "
                             f"{val_frac}; use --split all, or other --train-frac/--val-frac")
    device = resolve_device(args.device)
    loss = Evaluator(ids, device)(mf.build(device))
    print(f"{args.split}: {loss:.4f} nats/char ({loss / math.log(2):.4f} bits/char) over {len(ids) - 1:,} characters "
          f"of {path}")


def cmd_inspect(args) -> None:
    from . import artifact
    obj = artifact.safe_load(args.model, "charsearch model file or checkpoint")
    mf = artifact.load(args.model, obj)
    s = mf.summary
    c = mf.config
    preview = "".join(mf.vocab.chars[:60]).encode("unicode_escape").decode("ascii")
    val = s.get("val_loss")
    rows = [
        ("file", f"{args.model} ({obj['format']} v{obj['version']})"),
        ("model", f"{c['model']} {c['num_layers']}x{c['rnn_size']}, embedding {mf.state_dict['embed.weight'].shape[1]}, "
                  f"dropout {c['dropout']}"),
        ("parameters", f"{mf.num_params():,}"),
        ("vocabulary", f"{len(mf.vocab)} characters{' incl. unknown symbol' if mf.vocab.unk is not None else ''}: "
                       f"{preview}{'...' if len(mf.vocab) > 60 else ''}"),
        ("val loss", f"{val:.4f} nats/char ({val / math.log(2):.4f} bits/char)" if isinstance(val, float) else "-"),
        ("trained", f"{s.get('epoch', 0):.2f} epochs, {s.get('chars_trained', 0):,} characters"),
        ("data", f"{s.get('data_path', '-')} ({s.get('data_chars', 0):,} characters, sha256 "
                 f"{str(s.get('data_sha256', '-'))[:16]}...), split {s.get('train_frac')}/{s.get('val_frac')}, "
                 f"min_freq {s.get('min_freq')}"),
        ("where", f"{s.get('host', '-')} on {s.get('device', '-')}, torch {s.get('torch', '-')}"),
        ("when", s.get("trained_at", "-")),
    ]
    if s.get("trial_id"):
        rows.append(("trial", f"{s['trial_id']} (MLflow run {s.get('mlflow_run_id', '-')})"))
    if obj["format"] == artifact.CHECKPOINT_FORMAT:
        tc = obj.get("train_config", {})
        rows.append(("training", ", ".join(f"{k}={tc[k]}" for k in ("optimizer", "learning_rate", "batch_size",
                                                                      "seq_length") if k in tc)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


def cmd_serve(args) -> None:
    from .serve import make_server
    server = make_server(args.model, args.host, args.port, args.device, args.max_length, args.max_concurrent)
    if server.sampler.device.type == "cpu":
        import torch
        # generation is one tiny step per character, so per request: one thread (intra-op threads only
        # contend: 2x128 LSTM on 2 busy cores, 1,800 chars/s with one, 120 with two) and no oneDNN
        # (its LSTM step is ~10x slower at batch 1: 2x512, 290 chars/s without it, 38 with it)
        torch.set_num_threads(1)
        torch.backends.mkldnn.enabled = False
    host, port = server.server_address[:2]
    print(f"{server.info['description']}; sampling page at http://{host}:{port} (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the usual way to stop a server: not an error
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


# ---------------------------------------------------------------------------------------------
# sweeps, selection, the MLflow UI


def cmd_sweep(args) -> int:
    import json
    import time

    import yaml

    started = time.time()
    sweep = _sweep_from_args(args)
    plan_text = ""
    if sweep.auto:
        from .autosize import auto_sweep
        sweep, plan = auto_sweep(sweep, sweep.sweep_time)
        plan_text = plan.describe()
        import torch
        if torch.cuda.device_count():  # said before anything runs, not buried in the plan
            print(f"note: the auto-sized sweep measures and runs CPU trials (its GPU sizing is not built): the "
                  f"{torch.cuda.device_count()} GPU(s) here stay unused; a sweep file with resources.gpu (e.g. "
                  f"sweeps/shakespeare.yaml) trains on them", file=sys.stderr)
    if args.dry_run:
        import torch
        gpus = torch.cuda.device_count()
        print(yaml.safe_dump(sweep.to_file(), sort_keys=False).rstrip())
        if plan_text:
            print(plan_text)
        if sweep.gpu == "auto":
            from .data import load_corpus
            from .sweep import gpu_share, step_work
            vocab = len(load_corpus(sweep.corpus, sweep.min_freq).vocab)
            shares = sorted({gpu_share(step_work(sweep, p, vocab)) for p in _corners(sweep)})
            gpu = f"auto: {shares[0]:g} to {shares[-1]:g} of a GPU by model size" if gpus else "0 (no GPU here)"
        else:
            gpu = f"{sweep.gpu:g}" + (" -> no GPU here: trials would run on CPU" if sweep.gpu > 0 and not gpus
                                      and not (args.address or sweep.address) else "")
        print(f"# resources per trial: cpu {sweep.cpu:g}, gpu {gpu}; GPUs visible here: {gpus}")
        return 0
    if plan_text:
        print(plan_text, file=sys.stderr)
    from . import sweep as sweep_mod
    outcome = sweep_mod.run(sweep, resume=args.resume, address=args.address, tracking_uri=args.tracking_uri,
                            dashboard=args.dashboard, started=started, plan_text=plan_text)
    print(f"sweep {sweep.name}: {sweep_mod.describe_counts(outcome.counts)} in {outcome.wall_s / 60:.1f} min")
    for trial_id, error in list((outcome.errors or {}).items())[:3]:  # the full tracebacks are in MLflow
        print(f"trial {trial_id} failed: {error}", file=sys.stderr)
    if len(outcome.errors or {}) > 3:
        print(f"... and {len(outcome.errors) - 3} more failed trials (their errors: tag 'error' of their MLflow runs)",
              file=sys.stderr)
    if outcome.finish:
        print(f"the search's best trial {', '.join(outcome.finish['trials'])} trained on for "
              f"{outcome.finish['seconds']:.0f} s: val {outcome.finish['best'][0]:.4f}")
    if outcome.best_val_loss is not None:
        print(f"best val loss {outcome.best_val_loss:.4f} nats/char ({outcome.best_val_loss / math.log(2):.4f} "
              f"bits/char), trial {outcome.best_trial}: {json.dumps(outcome.best_config)}")
    print(f"MLflow: experiment {sweep.name!r}, parent run {outcome.parent_run_id}; Ray results: {outcome.experiment_dir}")
    again = f"charsearch sweep {args.file}" if args.file else f"charsearch sweep --data {args.data} --time {args.time}"
    if outcome.interrupted:
        print(f"interrupted: continue with  {again} --resume", file=sys.stderr)
        return 130
    if outcome.best_val_loss is None:
        print(f"charsearch sweep: error: no trial reported a val loss: {sweep_mod.describe_counts(outcome.counts)}; "
              f"give the sweep more time, or smaller models", file=sys.stderr)
        return 1
    print("next: charsearch best --export model.pt   (or charsearch ui to browse)")
    return 0


def _sweep_from_args(args):
    """The sweep file, or with --data and --time and no file the automatically sized sweep; the
    command line's overrides applied."""
    from .autosize import default_sweep, parse_duration
    from .sweepfile import load_sweep
    budget = parse_duration(args.time) if args.time is not None else None
    if args.file:
        if args.data:
            raise UsageError("--data goes with no sweep file (the file names its corpus in data.corpus)")
        sweep = load_sweep(args.file)
        if budget:
            sweep.sweep_time = budget
    else:
        if not args.data or budget is None:
            raise UsageError("give a sweep file (e.g. sweeps/smoke.yaml), or --data CORPUS --time DURATION for an "
                             "automatically sized sweep (e.g. --data tinyshakespeare --time 10m)")
        sweep = default_sweep(args.data, budget)
        sweep.auto = True
    if args.num_samples is not None:
        if args.num_samples < 1:
            raise UsageError(f"--num-samples must be >= 1; got {args.num_samples}")
        sweep.num_samples = args.num_samples
    if args.sweep_time is not None:
        if args.sweep_time < 0:
            raise UsageError(f"--sweep-time must be >= 0 seconds; got {args.sweep_time}")
        sweep.sweep_time = args.sweep_time
    if sweep.auto and not sweep.sweep_time:
        raise UsageError("an automatically sized sweep needs a budget: --time DURATION (e.g. 10m)")
    return sweep


def _corners(sweep) -> list[dict]:
    """The smallest and the largest trial of a search space (numeric extremes, each categorical value)."""
    numeric = {k: p for k, p in sweep.space.items() if all(isinstance(v, (int, float)) for v in p.values)}
    other = [k for k in sweep.space if k not in numeric]
    combos = [{}]
    for k in other:
        combos = [{**c, k: v} for c in combos for v in sweep.space[k].values]
    return [{**c, **{k: pick(p.values) for k, p in numeric.items()}} for c in combos for pick in (min, max)]


def cmd_best(args) -> None:
    import pandas as pd

    from . import select
    from .registry import check_name
    if args.register is not None:
        check_name(args.register)
    if args.export:
        from .files import write_target
        write_target(args.export)
    uri = recorded_store(args.tracking_uri)
    name, df = select.trials(uri, args.experiment)
    df = df.reindex(columns=sorted(df.columns))  # MLflow lists params in no fixed order: the table's stay put
    if args.top < 1:
        raise UsageError(f"--top must be >= 1; got {args.top}")
    with pd.option_context("display.max_columns", 30, "display.width", 200):
        counts = select.sweep_counts(uri, name)
        print(f"experiment {name!r}: {len(df)} trials, best first"
              + (f"; its latest sweep: {counts}" if counts else ""))
        print(select.table(df, args.top).to_string())
    if args.export:
        row, mf = select.export_best(uri, df, name, args.export)
        print(f"exported trial {row[f'tags.{select.TRIAL_TAG}']} (val {mf.summary.get('val_loss', float('nan')):.4f} "
              f"nats/char, MLflow run {row['run_id']}) to {args.export} (CPU float32); sample with: "
              f"charsearch sample {args.export}")
    if args.register is not None:
        from shlex import quote

        from .registry import register_best
        v = register_best(uri, df, name, args.register)
        print(f"registered {v.name} version {v.version}: trial {v.tags['trial_id']} "
              f"(val {float(v.tags['val_loss']):.4f} nats/char, MLflow run {v.run_id}); serve it with: "
              f"MLFLOW_TRACKING_URI={quote(uri)} "
              f"mlflow models serve -m {quote(f'models:/{v.name}/{v.version}')} --env-manager local")


def recorded_store(flag: str | None) -> str:
    """The tracking URI of a command that reads sweeps: a local SQLite store that does not exist holds
    none, and is not created by looking (resolve_uri's own precedence: flag, environment, default)."""
    import os
    from pathlib import Path

    from .config import DEFAULT_TRACKING_URI
    from .tracking import resolve_uri
    uri = flag or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise UsageError(f"no sweeps recorded in {uri} (no such database): run `charsearch sweep FILE` first, "
                         f"or pass --tracking-uri")
    return resolve_uri(flag)


def cmd_report(args) -> None:
    from . import report
    uri = recorded_store(args.tracking_uri)
    if args.top < 1:
        raise UsageError(f"--top must be >= 1; got {args.top}")
    r = report.run(uri, args.experiment, args.run, args.out, args.storage, args.top)
    print(r.summary)
    print(f"report: {len(r.files)} files in {r.out}/, logged to MLflow run {r.parent_run_id} under "
          f"{report.ARTIFACT_DIR}/ (charsearch ui to browse)")
    print(f"Optuna study {r.study_name!r} in {r.storage}; browse it with: optuna-dashboard {r.storage}")


def cmd_ui(args) -> None:
    import os

    from .tracking import resolve_uri
    uri = resolve_uri(args.tracking_uri)
    if uri.startswith(("http://", "https://")):
        raise UsageError(f"{uri} is a tracking server: open it in a browser, it serves the UI itself")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # lean: no job runner workers
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", args.host,
           "--port", str(args.port), "--workers", "1"]
    base = f"http://{args.host}:{args.port}"
    print(f"MLflow UI for {uri} at {base} (Ctrl-C stops it)", file=sys.stderr)
    try:  # MLflow 3 opens an experiment on its GenAI view; the trials are in the classic runs table
        from . import select
        from .tracking import SHARED_VIEW, client_for
        name, _ = select.trials(uri)
        exp = client_for(uri).get_experiment_by_name(name)
        link = f"{base}/#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning"
        if f"mlflow.sharedViewState.{SHARED_VIEW}" in exp.tags:  # the view the sweep shared (Tracker.share_view)
            link += f"&viewStateShareKey={SHARED_VIEW}"
        print(f"latest sweep '{name}': {link}", file=sys.stderr)
    except UsageError:  # no sweep recorded yet
        pass
    sys.stderr.flush()
    os.execve(sys.executable, cmd, env)


# ---------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    p = Parser(prog="charsearch", description="Find, train and ship character-level RNN language models.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    data = sub.add_parser("data", help="fetch or describe a corpus")
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=Parser)
    dsub.required = True
    f = dsub.add_parser("fetch", help="install a built-in corpus as data/<name>/input.txt (sha256-checked)")
    f.add_argument("name", help="tinyshakespeare")
    f.add_argument("--from", dest="source", metavar="FILE", help="install a local copy instead of downloading")
    f.add_argument("--data-root", default="data", help="folder of corpora (default: %(default)s)")
    f.set_defaults(func=cmd_data_fetch)
    i = dsub.add_parser("info", help="vocabulary, splits and unigram entropy of a corpus")
    i.add_argument("path", help="a text file, a folder with input.txt, or a name under data/")
    i.add_argument("--min-freq", type=int, default=0)
    i.add_argument("--train-frac", type=float, default=0.9)
    i.add_argument("--val-frac", type=float, default=0.1)
    i.add_argument("--data-root", default="data")
    i.set_defaults(func=cmd_data_info)

    t = sub.add_parser("train", help="train one model (char-rnn's train.lua)")
    add_train_options(t)
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("export", help="write the portable model file (CPU float32) of a checkpoint")
    e.add_argument("checkpoint")
    e.add_argument("--out", required=True, help="model file to write, e.g. model.pt")
    e.set_defaults(func=cmd_export)

    s = sub.add_parser("sample", help="generate text from a model file (char-rnn's sample.lua)")
    s.add_argument("model", help="model file (from export or best --export) or checkpoint")
    s.add_argument("--primetext", default="", help="text to start from (default: none)")
    s.add_argument("--length", type=int, default=2000, help="characters to generate (default: %(default)s)")
    s.add_argument("--temperature", type=float, default=1.0, help="> 0; lower is more conservative (default: 1)")
    s.add_argument("--top-k", type=int, default=0, help="sample only among the k likeliest characters (0: all)")
    s.add_argument("--argmax", action="store_true", help="always take the likeliest character (char-rnn -sample 0)")
    s.add_argument("--seed", type=int, default=123, help="same seed, same text (default: %(default)s)")
    s.add_argument("--num-samples", type=int, default=1, help="samples generated together in one batch")
    s.add_argument("--stop", default="", help="end a sample once it produces this string")
    s.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    s.set_defaults(func=cmd_sample)

    v = sub.add_parser("eval", help="fair loss of a model on a split or any text file (torch-rnn's eval.lua)")
    v.add_argument("model")
    v.add_argument("--data", required=True, help="text file, folder with input.txt, or a name under data/")
    v.add_argument("--split", choices=("val", "test", "all"), default="val",
                   help="val/test: by the model's training fractions; all: the whole file (default: %(default)s)")
    v.add_argument("--train-frac", type=float, default=None)
    v.add_argument("--val-frac", type=float, default=None)
    v.add_argument("--device", default="auto")
    v.set_defaults(func=cmd_eval)

    n = sub.add_parser("inspect", help="what a model file or checkpoint holds")
    n.add_argument("model")
    n.set_defaults(func=cmd_inspect)

    r = sub.add_parser("serve", help="a web page and JSON API to sample from a model file (one process)")
    r.add_argument("model", help="model file (from export or best --export) or checkpoint")
    r.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    r.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    r.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    r.add_argument("--max-length", type=int, default=5000, help="longest sample a request may ask for "
                                                                "(default: %(default)s characters)")
    r.add_argument("--max-concurrent", type=int, default=2, help="samples generated at once; more requests get "
                                                                 "HTTP 429 (default: %(default)s)")
    r.set_defaults(func=cmd_serve)

    w = sub.add_parser("sweep", help="search hyperparameters: Optuna in Ray Tune, ASHA, MLflow")
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
    w.add_argument("--dashboard", action="store_true", help="start the Ray dashboard")
    w.set_defaults(func=cmd_sweep)

    b = sub.add_parser("best", help="rank a sweep's trials from MLflow; --export writes the best model file")
    b.add_argument("--experiment", default=None, help="sweep name (default: the most recent sweep)")
    b.add_argument("--top", type=int, default=10, help="rows to show (default: %(default)s)")
    b.add_argument("--export", metavar="PATH", default=None, help="write the best trial's model file here")
    b.add_argument("--register", metavar="NAME", default=None,
                   help="log the best trial's model to MLflow (python_function) and register a new version of NAME")
    b.add_argument("--tracking-uri", default=None)
    b.set_defaults(func=cmd_best)

    r = sub.add_parser("report", help="plots, summary and memorisation check of a sweep, from MLflow")
    r.add_argument("--experiment", default=None, help="sweep name (default: the most recent sweep)")
    r.add_argument("--run", default=None, metavar="RUN_ID",
                   help="the sweep's parent run, when it ran more than once (default: its latest run)")
    r.add_argument("--out", default=None, metavar="DIR", help="folder for the files (default: report/<experiment>)")
    r.add_argument("--top", type=int, default=10, help="trials whose learning curves are drawn (default: %(default)s)")
    r.add_argument("--storage", default=None, metavar="URL", help="Optuna storage for the rebuilt study (default: "
                                                                   "optuna.db beside an SQLite tracking store)")
    r.add_argument("--tracking-uri", default=None)
    r.set_defaults(func=cmd_report)

    u = sub.add_parser("ui", help="serve the MLflow UI for the project's store on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    u.add_argument("--tracking-uri", default=None)
    u.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except UsageError as e:
        print(f"charsearch {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"charsearch {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `charsearch sample ... | head`
        sys.stderr.close()
        return 0
    except OSError as e:  # a path that cannot be read or written: a folder given for a file, no permission, ...
        where = f"{e.filename}: " if e.filename else ""
        print(f"charsearch {args.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
