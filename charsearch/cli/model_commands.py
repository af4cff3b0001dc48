"""Commands of the ML core (no Ray, no MLflow): data, train, export, sample, eval, inspect, serve."""

from __future__ import annotations

import importlib.util
import json
import sys

from charsearch.cli.common import (
    add_sample_options,
    add_train_options,
    command,
    positive,
    sample_options_from_args,
    train_config_from_args,
)
from charsearch.core.config import MAX_CONCURRENT, MAX_LENGTH, label_of
from charsearch.core.errors import UsageError
from charsearch.core.units import loss_text

# --- data ---------------------------------------------------------------------------------------


def add_data(sub) -> None:
    data = sub.add_parser("data", help="fetch or describe a corpus")
    data.set_defaults(parser=data)
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", parser_class=type(data))
    actions.required = True
    f = command(actions, "fetch", cmd_data_fetch, "install a built-in corpus as data/<name>/input.txt (sha256-checked)")
    f.add_argument("name", help="tinyshakespeare")
    f.add_argument("--from", dest="source", metavar="FILE", help="install a local copy instead of downloading")
    f.add_argument("--data-root", default="data", help="folder of corpora (default: %(default)s)")
    i = command(actions, "info", cmd_data_info, "vocabulary, splits and the unigram baseline of a corpus")
    i.add_argument("path", help="a text file, a folder with input.txt, or a name under data/")
    i.add_argument("--min-freq", type=int, default=0)
    i.add_argument("--train-frac", type=float, default=0.9)
    i.add_argument("--val-frac", type=float, default=0.1)
    i.add_argument("--data-root", default="data")


def cmd_data_fetch(args) -> None:
    from charsearch.core.data import fetch
    path = fetch(args.name, args.data_root, args.source)
    print(f"{path}: {path.stat().st_size:,} bytes, sha256 verified")


def cmd_data_info(args) -> None:
    from charsearch.core.data import compressed_nats, load_corpus, split_bounds, unigram_baseline
    corpus = load_corpus(args.path, args.min_freq, args.data_root)
    n = len(corpus.ids)
    a, b = split_bounds(n, args.train_frac, args.val_frac)
    base = unigram_baseline(corpus, args.train_frac, args.val_frac)
    preview = "".join(corpus.vocab.chars[:80]).encode("unicode_escape").decode("ascii")
    print(f"corpus     {corpus.path} ({n:,} characters, sha256 {corpus.sha256[:16]}...)")
    print(f"vocabulary {len(corpus.vocab):,} characters{' incl. unknown symbol' if corpus.vocab.unk is not None else ''}"
          f", stored as {corpus.vocab.dtype}: {preview}")
    print(f"splits     train {a:,} / val {b - a:,} / test {n - b:,} characters")
    print(f"unigram    the train split's character frequencies score {loss_text(base.cross_entropy)} on val "
          f"(add-one smoothed): a model must beat this")
    print(f"lzma       {loss_text(compressed_nats(corpus, args.train_frac, args.val_frac))} on the start of the train "
          f"split: the information a character carries; a trained model usually ends 10-25% below")
    if base.unseen:
        print(f"unseen     {base.unseen:,} val characters ({100 * base.unseen / max(1, b - a):.1f}%) never occur in "
              f"the train split")


# --- train, export ------------------------------------------------------------------------------


def add_train(sub) -> None:
    t = command(sub, "train", cmd_train, "train one model (char-rnn's train.lua)")
    add_train_options(t)
    t.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: every core, or one where other work on the machine makes them slower: "
                        "timed at the start and watched as it trains); a fixed number makes a seeded run repeat "
                        "exactly")
    t.add_argument("--quiet", action="store_true", help="no progress output")


def cmd_train(args) -> None:
    from charsearch.core.data import load_corpus
    from charsearch.core.devices import HEADROOM, admissible_bytes, check_training_size, resolve_device
    from charsearch.core.train import train
    cfg = train_config_from_args(args)
    if args.threads is not None:
        import torch
        torch.set_num_threads(positive("--threads", args.threads))
    if cfg.init_from:  # a resumed run takes the checkpoint's architecture: checked against its weights
        from charsearch.core.artifact import load
        load(cfg.init_from)
    else:
        vocab = len(load_corpus(cfg.data, cfg.min_freq).vocab)
        check_training_size(cfg, vocab, admissible_bytes(resolve_device(cfg.device)),
                            limit_words=f"available now ({HEADROOM:.0%} of the memory free)")
    result = train(cfg, progress=not args.quiet, thread_rates=None if args.threads else (None, None))
    print(f"best val loss {loss_text(result.best_val_loss)} after {result.epochs:.2f} epochs ({result.stop_reason}); "
          f"{result.chars_per_sec:,.0f} chars/s")
    from charsearch.core.data import unigram_note
    note = unigram_note(result.best_val_loss, load_corpus(cfg.data, cfg.min_freq), cfg.train_frac, cfg.val_frac)
    if note:
        print(note, file=sys.stderr)
    print(f"best checkpoint: {result.best_checkpoint}")
    print(f"export it with:  charsearch export {result.best_checkpoint} --out model.pt")


def add_export(sub) -> None:
    e = command(sub, "export", cmd_export, "write the portable model file (CPU float32) of a checkpoint, or its "
                                           "ONNX step graph")
    e.add_argument("checkpoint", help="a checkpoint, a model file or an ensemble file")
    e.add_argument("--out", required=True, help="file to write, e.g. model.pt or model.onnx")
    e.add_argument("--format", choices=("pt", "onnx"), default=None,
                   help="pt: charsearch's model file; onnx: one generation step for onnxruntime and other ONNX "
                        "runtimes, no PyTorch needed (default: by --out's suffix)")


def cmd_export(args) -> None:
    from charsearch.core import artifact
    from charsearch.core.files import write_target
    write_target(args.out)
    if (args.format or ("onnx" if str(args.out).endswith(".onnx") else "pt")) == "onnx":
        from charsearch.core.onnx_step import export_onnx
        mf = artifact.load(args.checkpoint)
        meta = export_onnx(mf, args.out)
        print(f"{args.out}: {meta['charsearch.model']}, one generation step as ONNX (opset {meta['opset']}); state "
              f"inputs {', '.join(name for name, _, _ in json.loads(meta['charsearch.states']))}")
        if importlib.util.find_spec("onnxruntime"):
            from charsearch.core.onnx_step import greatest_difference
            print(f"checked with onnxruntime: its log-probabilities are the model's to "
                  f"{greatest_difference(mf, args.out, steps=100):.1e} over 100 steps")
        return
    mf = artifact.export(args.checkpoint, args.out)
    val = mf.summary.get("val_loss")
    print(f"{args.out}: {mf.label}, {mf.num_params():,} parameters, vocab {len(mf.vocab)}"
          f"{f', val loss {val:.4f}' if isinstance(val, float) else ''} (CPU float32)")


# --- sample, eval, inspect ----------------------------------------------------------------------


def add_sample(sub) -> None:
    s = command(sub, "sample", cmd_sample, "generate text from a model file (char-rnn's sample.lua)")
    s.add_argument("model", help="model file (from export or best --export) or checkpoint")
    add_sample_options(s)
    s.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")


def cmd_sample(args) -> None:
    import contextlib

    from charsearch.core import artifact
    from charsearch.core.devices import resolve_device
    from charsearch.core.sample import Sampler, cpu_sampling
    opts = sample_options_from_args(args).validate()
    device = resolve_device(args.device)
    if device.type == "cpu":
        contextlib.ExitStack().enter_context(cpu_sampling())  # for the rest of the command
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


def add_eval(sub) -> None:
    v = command(sub, "eval", cmd_eval, "fair loss of a model on a split or any text file (torch-rnn's eval.lua)")
    v.add_argument("model")
    v.add_argument("--data", required=True, help="text file, folder with input.txt, or a name under data/")
    v.add_argument("--split", choices=("val", "test", "all"), default="val",
                   help="val/test: by the model's training fractions; all: the whole file (default: %(default)s)")
    v.add_argument("--train-frac", type=float, default=None)
    v.add_argument("--val-frac", type=float, default=None)
    v.add_argument("--device", default="auto")


def cmd_eval(args) -> None:
    from charsearch.core import artifact
    from charsearch.core.config import TrainConfig
    from charsearch.core.data import MIN_EVAL_CHARS, encode_with, resolve_path, split_bounds_apply
    from charsearch.core.devices import resolve_device
    from charsearch.core.train import Evaluator
    mf = artifact.load(args.model)
    path = resolve_path(args.data)
    ids = encode_with(path, mf.vocab)
    train_frac = args.train_frac if args.train_frac is not None else mf.summary.get("train_frac", TrainConfig.train_frac)
    val_frac = args.val_frac if args.val_frac is not None else mf.summary.get("val_frac", TrainConfig.val_frac)
    if args.split != "all":
        _, val, test = split_bounds_apply(ids, train_frac, val_frac)
        ids = val if args.split == "val" else test
        if len(ids) < MIN_EVAL_CHARS:
            raise UsageError(f"{path}: the {args.split} split is empty with train_frac {train_frac} + val_frac "
                             f"{val_frac}; use --split all, or other --train-frac/--val-frac")
    device = resolve_device(args.device)
    loss = Evaluator(ids, device)(mf.build(device))
    print(f"{args.split}: {loss_text(loss)} over {len(ids) - 1:,} characters of {path}")


def add_inspect(sub) -> None:
    command(sub, "inspect", cmd_inspect, "what a model file or checkpoint holds").add_argument("model")


def cmd_inspect(args) -> None:
    from charsearch.core import artifact
    obj = artifact.safe_load(args.model, "charsearch model file or checkpoint")
    mf = artifact.load(args.model, obj)
    s = mf.summary
    preview = "".join(mf.vocab.chars[:60]).encode("unicode_escape").decode("ascii")
    val = s.get("val_loss")
    rows = [("file", f"{args.model} ({obj['format']} v{obj['version']})"), *model_rows(mf),
            ("parameters", f"{mf.num_params():,}"),
        ("vocabulary", f"{len(mf.vocab)} characters{' incl. unknown symbol' if mf.vocab.unk is not None else ''}: "
                       f"{preview}{'...' if len(mf.vocab) > 60 else ''}"),
        ("val loss", loss_text(val) if isinstance(val, float) else "-"),
        ("trained", f"{s.get('epoch', 0):.2f} epochs, {s.get('chars_trained', 0):,} characters"),
        ("data", f"{s.get('data_path', '-')} ({s.get('data_chars', 0):,} characters, sha256 "
                 f"{str(s.get('data_sha256', '-'))[:16]}...), split {s.get('train_frac')}/{s.get('val_frac')}, "
                 f"min_freq {s.get('min_freq')}"),
        ("where", f"{s.get('host', '-')} on {s.get('device', '-')}, torch {s.get('torch', '-')}"),
        ("when", s.get("trained_at", "-")),
    ]
    if s.get("trial_id"):
        rows.append(("trial", f"{s['trial_id']} (MLflow run {s.get('mlflow_run_id', '-')})"))
    if s.get("test_loss") is not None:
        rows.insert(5, ("test loss", loss_text(s["test_loss"])))
    if obj["format"] == artifact.CHECKPOINT_FORMAT:
        tc = obj["train_config"]
        rows.append(("training", ", ".join(f"{k}={tc[k]}" for k in ("optimizer", "learning_rate", "batch_size",
                                                                      "seq_length") if k in tc)))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


# --- serve --------------------------------------------------------------------------------------


def model_rows(mf) -> list[tuple[str, str]]:
    """inspect's rows for the model itself: its shape, or an ensemble's members with their weights."""
    def shape(m) -> str:
        c = m.config
        return f"{label_of(c)}, embedding {m.state_dict['embed.weight'].shape[1]}, dropout {c['dropout']}"
    if not hasattr(mf, "members"):
        return [("model", shape(mf))]
    rows = [("model", f"ensemble of {len(mf.members)}: next-character probabilities mixed by weight")]
    return rows + [(f"  x{w:.3f}", f"{shape(m)}, {m.num_params():,} parameters") for m, w in zip(mf.members, mf.weights)]


def add_serve(sub) -> None:
    r = command(sub, "serve", cmd_serve, "a web page and JSON API to sample from a model file (one process)")
    r.add_argument("model", help="model file (from export or best --export) or checkpoint")
    r.add_argument("--host", default="127.0.0.1", help="bind address (default: %(default)s, this machine only)")
    r.add_argument("--port", type=int, default=8000, help="(default: %(default)s)")
    r.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or cuda:N")
    r.add_argument("--max-length", type=int, default=MAX_LENGTH, help="longest sample a request may ask for "
                                                                      "(default: %(default)s characters)")
    r.add_argument("--max-concurrent", type=int, default=MAX_CONCURRENT, help="samples generated at once; more "
                                                                              "requests get HTTP 429 (default: "
                                                                              "%(default)s)")


def cmd_serve(args) -> None:
    import contextlib

    from charsearch.core.sample import cpu_sampling
    from charsearch.serve import make_server
    server = make_server(args.model, args.host, args.port, args.device, args.max_length, args.max_concurrent)
    if server.sampler.device.type == "cpu":
        contextlib.ExitStack().enter_context(cpu_sampling())  # for the server's life
    host, port = server.server_address[:2]
    print(f"{server.info['description']}; sampling page at http://{host}:{port} (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:  # the usual way to stop a server: not an error
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()


COMMANDS = (add_data, add_train, add_export, add_sample, add_eval, add_inspect, add_serve)
