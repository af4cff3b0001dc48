"""How well does what ASHA compares at a rung predict where a trial ends? (short-horizon bias)

Draws N configurations from the auto sweep's own space for a corpus and budget (its planned shapes,
learning rate, dropout and step sizes; the prior first), and trains each as a winner of the sweep would
train: one thread, a constant rate for the search's share of the budget, then decaying linearly to 0
(`wsd`, decay over 1 - SEARCH_FRACTION). At each of four rungs from the plan's grace period (in
characters trained; a sweep's ASHA uses the first two, inside the search's window) it records two predictors of
the end, and the rate the run was at there (past the constant phase, a run is already decaying):

    rung      the best fair val loss so far, what ASHA compares today
    cooldown  the val loss after a short branch from the rung's checkpoint in which the rate decays
              linearly to 0 over --cooldown of the characters trained so far (warmup-stable-decay's
              cooldown, Hagele et al. 2024), discarded afterwards; taken after the run, off its clock,
              at the rungs its constant phase reached (where a sweep's ASHA compares)

and reports the Spearman rank correlation of each with the final values, with what the cooldown costs.

    python benchmarks/bench_rungs.py --data tinyshakespeare --time 600 --configs 8 [--parallel 2]
    python benchmarks/bench_rungs.py --data large.txt --time 1800 --configs 6 --search always --section rungs-large-cpu

Writes its section of BENCHMARKS.md (`rungs-cpu` unless --section says) and benchmarks/plots/<section>.json.
`--search always` draws from the space the sweep would search where auto would not search at all.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PLOTS, save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import SEARCH_FRACTION  # noqa: E402
from charsearch.search.sweepfile import SearchParam  # noqa: E402
from charsearch.search.trial import report_iterations  # noqa: E402

RATES = (2e-3, 1e-2)  # what --vary learning_rate draws from (log-uniform): Adam with clipping trains in it on a CPU


def spearman(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=lambda i: x[i])
        r = [0.0] * len(x)
        for rank, i in enumerate(order):
            r[i] = float(rank)
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = statistics.mean(ra), statistics.mean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5


def corpus_name(data: str) -> str:
    """A corpus's name for the section: its file's stem, or its folder's name for an `input.txt`."""
    path = Path(data)
    return path.parent.name if path.stem == "input" and path.parent.name else path.stem


def draw(space: dict, first: dict, n: int, seed: int, vary: list[str] | None = None) -> list[dict]:
    """The prior, then n - 1 draws from the space (uniform, log-uniform where the kind says); with `vary`,
    only those dimensions are drawn and the others stay the prior's."""
    import math
    rng = random.Random(seed)
    out = [dict(first)]
    while len(out) < n:
        point = dict(first) if vary else {}
        for name, p in space.items():
            if vary and name not in vary:
                continue
            if p.kind == "choice":
                point[name] = rng.choice(p.values)
            elif p.log:
                point[name] = math.exp(rng.uniform(math.log(p.values[0]), math.log(p.values[1])))
            else:
                point[name] = rng.uniform(*p.values)
        out.append(point)
    return out


def run_one(job: dict) -> dict:
    """One configuration to the end, with its rung values; then, off its clock, the cooldowns from the rungs
    its constant phase reached (in its own process)."""
    import torch

    from charsearch.core.config import TrainConfig
    from charsearch.core.train import train
    torch.set_num_threads(1)
    rungs = job["rungs"]
    seen, work = {}, Path(job["work"])
    branch_from = {}

    def on_eval(metrics, checkpoint, is_best):
        for r in rungs:
            if r not in seen and metrics["chars_trained"] >= r:
                share = metrics["learning_rate"] / job["train"]["learning_rate"]
                seen[r] = {"rung": metrics["best_val_loss"], "rate_share": share, "cooldowns": {}}
                if share > 0.999:  # a rung inside the constant phase, where a sweep's ASHA compares
                    branch_from[r] = (shutil.copy(checkpoint, work / f"rung{len(branch_from)}.pt"), dict(metrics))
        return False

    cfg = TrainConfig.from_dict({**job["train"], "checkpoint_dir": str(work / "main")})
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    result = train(cfg, on_eval=on_eval, progress=False)
    train_s, t0 = time.monotonic() - t0, time.monotonic()
    for r, (checkpoint, metrics) in branch_from.items():
        for share in job["cooldowns"]:
            seen[r]["cooldowns"][str(share)] = cooldown(job, Path(checkpoint), metrics, share)
    return {"config": job["config"], "final": result.best_val_loss, "rungs": {str(k): v for k, v in seen.items()},
            "train_s": train_s, "cooldown_s": time.monotonic() - t0}


def cooldown(job: dict, checkpoint: Path, metrics: dict, share: float) -> float:
    """The val loss after a linear decay to 0 over `share` of the characters trained so far, from the rate at the
    checkpoint, branched from it (resumed exactly: optimizer and schedule position), then thrown away."""
    from charsearch.core.config import TrainConfig
    from charsearch.core.train import train
    iters = metrics["iteration"]
    extra = max(1, round(share * iters))
    per_epoch = metrics["iteration"] / metrics["epoch"]
    cfg = TrainConfig.from_dict({**job["train"], "init_from": str(checkpoint), "lr_schedule": "wsd",
                                 "learning_rate": metrics["learning_rate"],
                                 "decay_frac": extra / (iters + extra), "max_time": 0.0,
                                 "max_epochs": (iters + extra) / per_epoch, "eval_every": iters + extra,
                                 "checkpoint_dir": str(Path(job["work"]) / f"cool{iters}-{share}")})
    return train(cfg, progress=False).history[-1]["val_loss"]


def measure(args) -> tuple[list, list, int]:
    from charsearch.core.data import load_corpus
    from charsearch.search.autosize import auto_sweep, default_sweep
    sweep, _ = auto_sweep(default_sweep(args.data, args.time), args.time, cpus=args.parallel, search=args.search)
    n = len(load_corpus(sweep.corpus).split(sweep.train_frac, sweep.val_frac)[0])
    grace = sweep.grace_epochs * n
    rungs = [grace * sweep.reduction_factor ** k for k in range(4)]
    vary = args.vary.split(",") if args.vary else None
    if vary and "learning_rate" in vary:  # the sweep trains every trial at the prior's rate; here it is drawn
        sweep.space["learning_rate"] = SearchParam("log_float", list(RATES))
    if vary and not set(vary) <= set(sweep.space):
        raise SystemExit(f"--vary {args.vary}: the space's dimensions are {', '.join(sweep.space)}")
    points = draw(sweep.space, sweep.points_to_evaluate[0], args.configs, args.seed, vary)
    with tempfile.TemporaryDirectory() as tmp:
        jobs = []
        for i, point in enumerate(points):
            train_cfg = sweep.trial_config(point).to_dict()
            train_cfg.update(lr_schedule="wsd", decay_frac=1 - SEARCH_FRACTION, max_time=args.time, max_epochs=1e4,
                             eval_every=report_iterations(sweep.report_every_epochs * n, sweep.trial_config(point)),
                             patience=0)
            jobs.append({"config": point, "train": train_cfg, "rungs": rungs, "work": f"{tmp}/{i}",
                         "cooldowns": args.cooldowns})
        with multiprocessing.get_context("spawn").Pool(args.parallel) as pool:
            results = pool.map(run_one, jobs)
    return rungs, results, n


def rate_shares(have: list, rung) -> str:
    """The range of the rates the configurations were at when they reached `rung`, as shares of their constant
    rate: below 1 where the rung fell in a run's decay (runs saved before this was recorded: unknown)."""
    shares = [r["rungs"][str(rung)].get("rate_share") for r in have]
    if None in shares:
        return "not recorded"
    return f"{min(shares):.2f}" if f"{min(shares):.2f}" == f"{max(shares):.2f}" else f"{min(shares):.2f}-{max(shares):.2f}"


def scatter(rungs: list, results: list, n: int, stem: str, lengths: list[str]) -> str:
    """Per rung, each configuration's rung value and values after the cooldowns against where it ended (the
    prior ringed); saved as benchmarks/plots/STEM.png. Returns the Markdown image line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = [r for r in rungs if sum(str(r) in x["rungs"] for x in results) >= 4]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.2), squeeze=False, sharey=True)
    colours = ("#4878a8", "#c8553d", "#5a9e6f")
    for ax, rung in zip(axes[0], shown):
        have = [x for x in results if str(rung) in x["rungs"]]
        series = [("rung value", [x["rungs"][str(rung)]["rung"] for x in have], "#777777")]
        series += [(f"after a {float(length):.0%} cooldown", [x["rungs"][str(rung)]["cooldowns"].get(length) for x in have],
                    colour) for length, colour in zip(lengths, colours)]
        for label, xs, colour in series:
            pairs = [(v, x["final"]) for v, x in zip(xs, have) if v is not None]
            if pairs:
                ax.scatter(*zip(*pairs), s=18, color=colour, label=label)
            if have[0] is results[0] and xs[0] is not None:
                ax.scatter(xs[:1], [have[0]["final"]], s=90, facecolors="none", edgecolors="black")
        ax.set(title=f"rung at {rung / n:.3g} epochs", xlabel="val loss at the rung (nats/char)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("val loss at the end (nats/char)")
    axes[0][0].legend(fontsize=7)
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / f"{stem}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![Rung values against the end; the prior ringed](benchmarks/plots/{stem}.png)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="tinyshakespeare")
    ap.add_argument("--time", type=float, default=600, help="seconds each configuration trains")
    ap.add_argument("--configs", type=int, default=8)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search", default="auto", choices=("auto", "always"), help="the space auto draws from: "
                    "always = the one it searches where auto would train the prior alone")
    ap.add_argument("--vary", default="", help="comma-separated dimensions of the space to draw (the others the "
                    "prior's), e.g. learning_rate: how the rungs order one shape at several rates")
    ap.add_argument("--cooldown", default="0.05", help="comma-separated lengths of the branch, each a share of the "
                    "steps before the rung, e.g. 0.05,0.25")
    ap.add_argument("--section", default="rungs-cpu", help="BENCHMARKS.md section (and JSON) to write")
    ap.add_argument("--from-json", action="store_true", help="write the section from its saved JSON, without training")
    args = ap.parse_args()
    saved_as = args.section.replace("-", "_")

    if args.from_json:  # the section again from a saved run, without training
        saved = json.loads((PLOTS / f"{saved_as}.json").read_text())
        args = argparse.Namespace(**{"search": "auto", "section": "rungs-cpu", "vary": "", **saved["args"],
                                     "from_json": True})
        args.cooldown = str(args.cooldown) if "cooldown" in saved["args"] else "0.05"
        rungs, results, n = saved["rungs"], saved["results"], saved["train_chars"]
        for r in results:  # runs saved with one cooldown, taken at every rung
            for v in r["rungs"].values():
                v.setdefault("cooldowns", {args.cooldown: v.pop("cooldown")} if "cooldown" in v else {})
    else:
        try:
            args.cooldowns = [float(x) for x in args.cooldown.split(",")]
            assert all(0 < x <= 1 for x in args.cooldowns)
        except (ValueError, AssertionError):
            raise SystemExit(f"--cooldown {args.cooldown}: give shares of the steps before the rung in (0, 1], "
                             "comma-separated, e.g. 0.05,0.25")
        rungs, results, n = measure(args)
        save_json(saved_as, {"args": vars(args), "rungs": rungs, "results": results, "train_chars": n})
    lengths = [str(float(x)) for x in str(args.cooldown).split(",")]
    rows = []
    finals = [r["final"] for r in results]
    for rung in rungs:
        have = [r for r in results if str(rung) in r["rungs"]]
        if len(have) < 4:
            continue
        f = [r["final"] for r in have]
        row = {"rung (epochs)": f"{rung / n:.3g}", "configurations": len(have),
               "Spearman, rung value": f"{spearman([r['rungs'][str(rung)]['rung'] for r in have], f):.2f}"}
        for length in lengths:
            cooled = [r["rungs"][str(rung)]["cooldowns"].get(length) for r in have]
            row[f"Spearman, after a {float(length):.0%} cooldown"] = (
                f"{spearman(cooled, f):.2f}" if None not in cooled else "not taken (past the constant phase)")
        rows.append({**row, "rate there (share of the constant rate)": rate_shares(have, rung)})
    cost = sum(r["cooldown_s"] for r in results) / max(1e-9, sum(r["train_s"] for r in results))
    best = min(results, key=lambda r: r["final"])
    described = lambda c: ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items())  # noqa
    lowest = ("it was the lowest" if best is results[0] else
              f"the lowest was a draw, {described(best['config'])}: {best['final']:.3f}, "
              f"{results[0]['final'] - best['final']:.3f} below the prior")
    body = (f"{args.configs} configurations of the auto sweep's space for {corpus_name(args.data)} at {args.time:.0f} s (the "
            f"prior first, then seeded draws{' of ' + args.vary + ', the rest the prior' + chr(39) + 's' if args.vary else ''}), each trained alone on one thread for {args.time:.0f} s as a "
            f"winner is: constant rate, then linear decay over the last {1 - SEARCH_FRACTION:.0%}; {args.parallel} at "
            f"a time, one seed each. Final values: {', '.join(f'{v:.3f}' for v in finals)}. The prior "
            f"({described(results[0]['config'])}) ended {results[0]['final']:.3f}; {lowest}. The cooldowns cost "
            f"{cost:.1%} of the training time.\n\n" + table(rows) + "\n\n" + scatter(rungs, results, n, saved_as, lengths))
    flags = "".join(f" --{k} {getattr(args, k)}" for k, default in (("search", "auto"), ("vary", ""), ("cooldown", "0.05"),
                                                                   ("section", "rungs-cpu")) if getattr(args, k) != default)
    title = ("" if args.section == "rungs-cpu" else f", {corpus_name(args.data)} at {args.time:.0f} s") + (
        f", {args.vary} only" if args.vary else "")
    write_section(args.section, f"Do rungs predict the end? (short-horizon bias, CPU{title})", body,
                  f"python benchmarks/bench_rungs.py --data {args.data} --time {args.time:.0f} --configs {args.configs}"
                  + flags)
    print(body)


if __name__ == "__main__":
    main()
