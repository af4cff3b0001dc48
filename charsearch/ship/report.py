"""The sweep report: a sweep's MLflow runs rebuilt as an Optuna study, drawn with Optuna's own plots,
stored for optuna-dashboard, summarised, and the best model checked for memorised text.

Ray's OptunaSearch keeps its study in memory, so nothing of it survives the sweep. MLflow holds every
trial, though: the search space is the parent run's resolved.yaml, a trial's params are its child
run's params, its value is `best_val_loss`, its intermediate values are the `val_loss` history
(step = characters trained), its state follows the `charsearch.outcome` tag. From these
`optuna.trial.create_trial` makes the trials of a study that `optuna.visualization` draws and that an
Optuna RDB storage keeps.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import tempfile
import textwrap
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization as ov
import optuna.visualization.matplotlib as om
import pandas as pd
import plotly.graph_objects as go
from matplotlib.colors import ListedColormap
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from mlflow.entities import Metric
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from charsearch.core.config import DEFAULT_SEED, SearchParam
from charsearch.core.errors import UsageError
from charsearch.core.units import fmt, loss_text
from charsearch.ship.candidates import bias_line
from charsearch.ship.selection import SweepRuns, load_sweep_runs, recorded_counts
from charsearch.tracking.layout import OUTCOME_TAG, OUTCOMES, TRIAL_TAG, describe_counts
from charsearch.tracking.store import client_for

TARGET = "best val loss (nats/char)"
ARTIFACT_DIR = "report"  # under the sweep's parent run
TOP_CURVES = 10
MAX_TRADEOFF = 50  # trials whose models are measured for the size/speed plot (each is sampled a moment)  # learning curves drawn: the best trials only, or the plot is a tangle
# PED-ANOVA (Optuna's default evaluator) scores each parameter by how its values in the top 10% of finished
# trials differ from all of them: with 10 or fewer, that top is the best trial alone
FEW_FOR_IMPORTANCES = 10
NGRAMS = (10, 20, 40)
MEMO_SAMPLES, MEMO_LENGTH, MEMO_SEED = 8, 1000, DEFAULT_SEED  # 8,000 sampled characters: a second or two on CPU


# ---------------------------------------------------------------------------------------------
# the sweep in MLflow


# ---------------------------------------------------------------------------------------------
# the Optuna study


def distributions(space: dict) -> dict[str, BaseDistribution]:
    """The sweep file's search space as Optuna distributions (the ones OptunaSearch searched:
    Tune's randint(a, b + 1) is Optuna's IntDistribution(a, b))."""
    out = {}
    for name, spec in space.items():
        (kind, values), = spec.items()
        p = SearchParam(kind, values)
        if p.kind == "choice":
            out[name] = CategoricalDistribution(p.values)
        else:
            out[name] = (IntDistribution if p.integer else FloatDistribution)(*p.values, log=p.log)
    return out


def cast(dist: BaseDistribution, text: str):
    """An MLflow param (always a string) back to the distribution's value."""
    if isinstance(dist, CategoricalDistribution):
        for choice in dist.choices:
            if str(choice) == text:
                return choice
        raise ValueError(f"{text!r} is not one of {list(dist.choices)}")
    return int(text) if isinstance(dist, IntDistribution) else float(text)


def _local(ts) -> dt.datetime | None:
    """An MLflow run time (a UTC timestamp) as the naive local datetime Optuna uses."""
    if ts is None or pd.isna(ts):
        return None
    return pd.Timestamp(ts).to_pydatetime().astimezone().replace(tzinfo=None)


def _finite(v) -> float | None:
    return float(v) if v is not None and not pd.isna(v) and math.isfinite(float(v)) else None


def rebuild_trials(uri: str, sweep: SweepRuns) -> list[FrozenTrial]:
    """One FrozenTrial per trial run, in the order the trials started (Optuna numbers them so)."""
    client = client_for(uri)
    dists = distributions(sweep.space)
    trials = []
    # Ray's trial ids (<experiment>_<index>) order trials that started in the same millisecond
    for _, row in sweep.trials.sort_values(["start_time", f"tags.{TRIAL_TAG}"], kind="stable").iterrows():
        trial_id = row[f"tags.{TRIAL_TAG}"]
        params = {}
        for name, dist in dists.items():
            text = row.get(f"params.{name}")
            if isinstance(text, str):
                try:
                    params[name] = cast(dist, text)
                except ValueError as e:
                    raise UsageError(f"trial {trial_id}: param {name}: {e} (outside the sweep's search space)") from None
        outcome = row.get(f"tags.{OUTCOME_TAG}")
        value = _finite(row.get("metrics.best_val_loss"))
        if isinstance(outcome, str) and outcome in OUTCOMES:
            state = TrialState[OUTCOMES[outcome].optuna_state]
        else:  # no outcome yet: the sweep is still running it
            state = TrialState.RUNNING
        if state == TrialState.COMPLETE and value is None:
            state = TrialState.FAIL
        curve = {int(m.step): m.value for m in client.get_metric_history(row["run_id"], "val_loss")
                 if math.isfinite(m.value)}
        trial = optuna.trial.create_trial(
            state=state,
            # as Optuna's tell() does, a pruned trial keeps a value: here the best val loss it reached
            value=value if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
            params=params, distributions={k: dists[k] for k in params}, intermediate_values=curve,
            user_attrs={"ray_trial_id": trial_id, "mlflow_run_id": row["run_id"],
                        "outcome": outcome if isinstance(outcome, str) else "running",
                        **({"best_val_loss": value} if value is not None else {})})
        # create_trial stamps "now"; the run's own times put the trials on the sweep's wall clock
        trial.datetime_start = _local(row["start_time"])
        if state.is_finished():
            trial.datetime_complete = _local(row["end_time"]) or trial.datetime_start
        trials.append(trial)
    return trials


def make_study(trials: list[FrozenTrial], storage=None, name: str | None = None) -> optuna.Study:
    """A minimising study holding `trials`. In an RDB storage, a study of the same name is replaced."""
    if storage is not None:
        try:
            optuna.delete_study(study_name=name, storage=storage)
        except KeyError:
            pass
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize")
    study.add_trials(trials)
    return study


def storage_beside(uri: str) -> str:
    """The Optuna storage next to an SQLite tracking store, else sqlite:///mlruns/optuna.db. A separate
    file: both Optuna and MLflow keep an alembic_version table, so they cannot share one database."""
    if uri.startswith("sqlite:///"):
        return uri.rsplit("/", 1)[0] + "/optuna.db"
    return "sqlite:///mlruns/optuna.db"


# ---------------------------------------------------------------------------------------------
# importances


def importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Optuna's default importance evaluator, or ({}, why not) when the trials do not allow it."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            imp = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError) as e:  # e.g. no finished trial at all
            return {}, f"parameter importances skipped: {e}"
    # too few trials to tell parameters apart: the evaluator says so and gives every one the same share
    if len(set(imp.values())) <= 1:
        why = next((str(w.message) for w in caught), "every parameter scored the same")
        return {}, f"parameter importances skipped ({complete} finished trial{'s' * (complete != 1)}): {why}"
    return imp, ""


def importance_caveat(study: optuna.Study) -> str:
    """What importances from few finished trials are worth, said on their plot and in the summary."""
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if complete > FEW_FOR_IMPORTANCES:
        return ""
    return (f"only {complete} finished trials: PED-ANOVA's top 10% is the best trial alone, "
            f"so these importances are a hint, not a ranking")


# ---------------------------------------------------------------------------------------------
# figures: each as a plotly figure (HTML) and a matplotlib one (PNG), both drawn by Optuna


@dataclass
class Figure:
    name: str
    html: object  # plotly.graph_objects.Figure
    png: object  # matplotlib.figure.Figure


def _mpl_figure(axes):
    """The matplotlib Figure behind what an optuna.visualization.matplotlib function returns."""
    return np.ravel(axes)[0].figure


def figures(study: optuna.Study, top: int = TOP_CURVES, with_importances: bool = True) -> list[Figure]:
    matplotlib.use("Agg")  # files only, never a window (pyplot picks its backend at the first figure)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's matplotlib backend
        # a parameter that only one value was tried for draws a flat axis; matplotlib widens it and says so
        warnings.filterwarnings("ignore", "Attempting to set identical", UserWarning)
        figs = _draw(study, top, with_importances)
    # room for one panel per parameter (slice, parallel coordinates) and one bar per trial (timeline)
    sizes = {"slice": lambda n_axes: (max(6.4, 2.6 * (n_axes - 1)), 4.8),
             "parallel_coordinate": lambda n_axes: (max(6.4, 1.4 * n_axes), 4.8),
             "timeline": lambda n_axes: (6.4, max(4.8, 0.2 * len(study.trials)))}
    for f in figs:
        if f.name in sizes:
            f.png.set_size_inches(*sizes[f.name](len(f.png.axes)))
        if f.name in ("slice", "parallel_coordinate"):
            readable(f.png)
    return figs


def readable(fig) -> None:
    """Optuna's slice and parallel-coordinate plots made legible: its Blues colour scale runs to white, so
    one trial vanishes on the grey background; and a log axis narrower than a decade (a learning rate
    searched over 2e-3..1e-2) gets a label in scientific notation at every minor tick, which overlap."""
    for ax in fig.axes:
        for c in ax.collections:
            if c.get_array() is not None:  # coloured by value: the trials' points and lines
                c.set_cmap(without_white(c.get_cmap()))
        for axis in (ax.xaxis, ax.yaxis):
            if axis.get_scale() == "log":
                plain_log_ticks(axis)


def luminance(rgba) -> float:
    r, g, b = np.asarray(rgba)[..., :3].T
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def without_white(cmap) -> ListedColormap:
    """The colour map less its lightest 40%."""
    light_at_0 = luminance(cmap(0.0)) > luminance(cmap(1.0))
    x = np.linspace(0.4, 1.0, 256) if light_at_0 else np.linspace(0.0, 0.6, 256)
    return ListedColormap(cmap(x), name=f"{cmap.name}_no_white")


def plain_log_ticks(axis) -> None:
    """Powers of ten on a log axis of two decades or more (as 1e-4); else 1, 2 and 5 times them, or a few
    evenly spaced round numbers where fewer than two of those fall in its range (as 0.0024). None at the
    very ends, where they would run into the labels of the next panel; minor ticks unlabelled."""
    lo, hi = sorted(axis.get_view_interval())
    a, b = math.log10(lo), math.log10(hi)
    margin = 0.1 * (b - a)

    def inner(ticks):
        return [t for t in ticks if t > 0 and a + margin <= math.log10(t) <= b - margin]

    if hi >= 100 * lo:
        ticks = inner(LogLocator().tick_values(lo, hi))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"1e{round(math.log10(v))}"))  # 1e-4, not 0.0001
    else:
        decades = range(math.floor(a), math.ceil(b) + 1)
        ticks = inner([m * 10.0 ** e for e in decades for m in (1, 2, 5)])
        for n in (2, 3, 4):  # the fewest round numbers that still give two labels
            if len(ticks) >= 2:
                break
            ticks = inner(MaxNLocator(n).tick_values(lo, hi))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_formatter(NullFormatter())


def _draw(study: optuna.Study, top: int, with_importances: bool) -> list[Figure]:
    valued = with_every_value(study)
    figs = [Figure("history", named(ov.plot_optimization_history(valued, target_name=TARGET), valued),
                   labelled(_mpl_figure(om.plot_optimization_history(valued, target_name=TARGET)), valued)),
            Figure("history_wall_time", *_history_wall_time(study)),
            Figure("timeline", ov.plot_timeline(study), _mpl_figure(om.plot_timeline(study)))]
    if with_importances:
        figs.append(Figure("importances", *_importances(study)))
    figs += [Figure("parallel_coordinate", ov.plot_parallel_coordinate(valued, target_name=TARGET),
                    _mpl_figure(om.plot_parallel_coordinate(valued, target_name=TARGET))),
             Figure("slice", named(ov.plot_slice(valued, target_name=TARGET), valued),
                    _mpl_figure(om.plot_slice(valued, target_name=TARGET))),
             Figure("learning_curves", *_learning_curves(study, top))]
    return figs


def with_every_value(study: optuna.Study) -> optuna.Study:
    """The study for the history, slice and parallel-coordinate plots, which draw only COMPLETE trials:
    every trial with a best val loss (stopped early by ASHA, cut by the budget) counts, as `best` ranks
    them; trials keep their numbers."""
    copy = optuna.create_study(direction="minimize")
    for t in study.get_trials(deepcopy=True):
        if t.value is not None and t.state != TrialState.COMPLETE:
            t.state = TrialState.COMPLETE
            t.datetime_complete = t.datetime_complete or t.datetime_start
        copy.add_trial(t)
    return copy


MAX_LABELS = 30  # trials whose ids are written beside their points in the PNG history


def labelled(fig, study: optuna.Study):
    """The PNG history with each point's Ray trial id beside it (up to MAX_LABELS points)."""
    ids = {t.number: t.user_attrs.get("ray_trial_id", f"Trial{t.number}") for t in study.trials}
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets() if ax.collections else []
    if 0 < len(points) <= MAX_LABELS:
        for x, y in points:
            ax.annotate(ids.get(int(round(x)), ""), (x, y), xytext=(3, 3), textcoords="offset points", fontsize=7)
    return fig


def named(fig, study: optuna.Study):
    """Each point of a plotly history or slice figure hovers with the Ray trial id `charsearch best` prints."""
    ids = {t.number: t.user_attrs.get("ray_trial_id", f"Trial{t.number}") for t in study.trials}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    for trace in fig.data:
        if trace.x is None or trace.mode == "lines":
            continue
        if fig.layout.xaxis.title.text == "Trial":  # the history: x is the trial number
            trace.text = [ids[int(n)] for n in trace.x]
        elif trace.name in ("Feasible Trial", None) and len(trace.x) == len(complete):
            trace.text = [ids[t.number] for t in complete]
        else:
            continue
        trace.hovertemplate = "trial %{text}<br>%{x}: %{y}<extra></extra>"
    return fig


def _importances(study: optuna.Study):
    fig = ov.plot_param_importances(study, target_name=TARGET)
    ax = om.plot_param_importances(study, target_name=TARGET)
    caveat = importance_caveat(study)
    if caveat:
        fig.update_layout(title={"text": f"{fig.layout.title.text}<br><sup>{caveat}</sup>"})
        ax.set_title(f"{ax.get_title(loc='left')}\n{textwrap.fill(caveat, 70)}", loc="left", fontsize="medium")
    return fig, ax.figure


def top_trials(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The trials with the lowest value, finished or stopped early, as `charsearch best` ranks them."""
    ranked = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
              if t.value is not None]
    return sorted(ranked, key=lambda t: t.value)[:top]


def _learning_curves(study: optuna.Study, top: int):
    """Optuna's intermediate-values plot (val loss against characters trained), kept to the best trials and
    labelled with the Ray trial ids that `charsearch best` prints."""
    # Optuna labels its traces and lines Trial<number>
    keep = {f"Trial{t.number}": t.user_attrs.get("ray_trial_id", f"Trial{t.number}") for t in top_trials(study, top)}
    rank = {name: i for i, name in enumerate(keep)}  # best first, in the legend too
    fig = ov.plot_intermediate_values(study)
    fig.data = sorted((trace for trace in fig.data if trace.name in keep), key=lambda trace: rank[trace.name])
    for trace in fig.data:
        trace.name = keep[trace.name]
    fig.update_layout(title=f"Learning curves of the best {len(keep)} trials", xaxis_title="characters trained",
                      yaxis_title="val loss (nats/char)")
    ax = om.plot_intermediate_values(study)
    for line in list(ax.lines):
        if line.get_label() in keep:
            line.set_label(keep[line.get_label()])
        else:
            line.remove()
    ax.set_title(f"Learning curves of the best {len(keep)} trials")
    ax.set_xlabel("characters trained")
    ax.xaxis.set_major_formatter(EngFormatter())  # 200k, 1M: raw character counts run into each other
    ax.set_ylabel("val loss (nats/char)")
    if ax.lines:
        order = {label: i for i, label in enumerate(keep.values())}
        lines = sorted(ax.lines, key=lambda line: order.get(line.get_label(), len(order)))
        ax.legend(lines, [line.get_label() for line in lines], bbox_to_anchor=(1.05, 1), loc="upper left",
                  borderaxespad=0.0)
    return fig, ax.figure


def _history_wall_time(study: optuna.Study):
    """Best value so far against wall time. Optuna draws the best so far only per trial number
    (plot_optimization_history) and wall time only per trial (plot_timeline), so this one is drawn here."""
    done = sorted((t for t in study.get_trials(deepcopy=False) if t.value is not None and t.datetime_complete),
                  key=lambda t: t.datetime_complete)
    starts = [t.datetime_start for t in study.trials if t.datetime_start is not None]
    x = [(t.datetime_complete - min(starts)).total_seconds() / 60 for t in done]
    y = [t.value for t in done]
    best = np.minimum.accumulate(y).tolist() if y else []
    title, xlabel = "Optimization History over Wall Time", "minutes since the first trial started"
    fig = go.Figure([go.Scatter(x=x, y=y, mode="markers", name=TARGET, text=[f"Trial{t.number}" for t in done]),
                     go.Scatter(x=x, y=best, mode="lines", line_shape="hv", name="Best Value")])
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=TARGET)
    with plt.style.context("ggplot"):  # as Optuna's matplotlib plots
        mfig, ax = plt.subplots(tight_layout=True)
        ax.scatter(x, y, label=TARGET)
        ax.step(x, best, where="post", color="tab:red", label="Best Value")
        ax.set(title=title, xlabel=xlabel, ylabel=TARGET)
        ax.set_xlim(left=0)
        ax.legend()
    return fig, mfig


def save_figures(figs: list[Figure], folder: Path) -> list[Path]:
    files = []
    for f in figs:
        # plotly.js from its CDN, as mlflow.log_figure writes HTML figures: kilobytes instead of 4.8 MB each
        f.html.write_html(folder / f"{f.name}.html", include_plotlyjs="cdn")
        f.png.savefig(folder / f"{f.name}.png", dpi=100, bbox_inches="tight")
        plt.close(f.png)
        files += [folder / f"{f.name}.html", folder / f"{f.name}.png"]
    return files


# ---------------------------------------------------------------------------------------------
# what can be shipped: val loss against size and sampling speed


def shippable(uri: str, sweep: SweepRuns, folder: Path) -> list:
    """The trials with a model (best val first, at most MAX_TRADEOFF), each with its file size, parameters
    and sampling speed on this CPU; the top ones' test loss where the sweep kept a test split."""
    from charsearch.ship.candidates import TEST_TOP, candidates, held_out, rate_of, splits_of
    pool = list(candidates(uri, sweep.trials, MAX_TRADEOFF, folder))
    for c in pool:
        rate_of(c)
    splits, _ = splits_of(sweep)
    if splits is not None:
        held_out(pool[:TEST_TOP], splits)
    return pool


def front(points: list[tuple[float, float]], lower_x: bool) -> list[int]:
    """Indices of the Pareto front of (x, val) points: none better in both (lower val, and lower x if
    lower_x else higher x), in x order."""
    sign = 1 if lower_x else -1
    order = sorted(range(len(points)), key=lambda i: (sign * points[i][0], points[i][1]))
    kept, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            kept.append(i)
            best = points[i][1]
    return kept


def tradeoff(pool: list) -> Figure:
    """Val loss against model file size and against sampling speed (one stream on this CPU), each with its
    Pareto front; the model `charsearch best --export` picks (lowest val) marked."""
    from plotly.subplots import make_subplots
    axes = (("model file size (MB)", lambda c: c.size / 1e6, True), ("sampling chars/s (one stream, this CPU)",
                                                                      lambda c: c.rate, False))
    fig = make_subplots(rows=1, cols=2, subplot_titles=[a[0] for a in axes])
    mfig, mpl_axes = plt.subplots(1, 2, figsize=(11, 4.5), tight_layout=True)
    for col, ((label, x_of, lower), ax) in enumerate(zip(axes, mpl_axes), start=1):
        points = [(x_of(c), c.val) for c in pool]
        edge = front(points, lower)
        names = [c.trial_id for c in pool]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="markers", text=names,
                                 name="trials", showlegend=col == 1, marker={"color": "#1f77b4"}), row=1, col=col)
        fig.add_trace(go.Scatter(x=[points[i][0] for i in edge], y=[points[i][1] for i in edge], mode="lines",
                                 line_shape="hv" if lower else "vh", name="Pareto front", showlegend=col == 1,
                                 line={"color": "#ff7f0e"}), row=1, col=col)
        fig.add_trace(go.Scatter(x=[points[0][0]], y=[points[0][1]], mode="markers", text=[names[0]],
                                 name=f"chosen ({names[0]})", showlegend=col == 1,
                                 marker={"symbol": "star", "size": 16, "color": "#d62728"}), row=1, col=col)
        fig.update_xaxes(title_text=label, type="log", row=1, col=col)
        ax.scatter([p[0] for p in points], [p[1] for p in points], label="trials")
        ax.step([points[i][0] for i in edge], [points[i][1] for i in edge], where="post" if lower else "pre",
                color="tab:orange", label="Pareto front")
        ax.scatter([points[0][0]], [points[0][1]], marker="*", s=200, color="tab:red", label=f"chosen ({names[0]})")
        ax.set(xlabel=label, ylabel="best val loss (nats/char)", xscale="log")
        ax.legend(fontsize="small")
    fig.update_yaxes(title_text="best val loss (nats/char)")
    fig.update_layout(title="What can be shipped: val loss against size and sampling speed")
    return Figure("tradeoff", fig, mfig)


# ---------------------------------------------------------------------------------------------
# memorisation


@dataclass
class Memorisation:
    trial: str  # the trial whose model was sampled
    chars: int  # characters sampled
    shares: dict[int, float]  # n -> share of the sampled n-grams found verbatim in the train split
    reference: dict[int, float]  # n -> the same share for the val split: real text the model never saw


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """A 64-bit polynomial hash of every n-gram of `ids` (uint64 arithmetic wraps: it works mod 2**64).
    It keeps the train split's n-grams at 8 bytes each, not a set of a million strings per n; a chance
    match between 8 k sampled and 1 M train n-grams of ordinary text is about 1 in 10**9."""
    m = len(ids) - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.uint64)
    ids = np.asarray(ids, dtype=np.uint64) + np.uint64(1)  # id 0 still counts
    h = np.zeros(m, dtype=np.uint64)
    for k in range(n):  # in place: a 1 MB corpus needs ~16 MB here, not a temporary per step
        h *= np.uint64(1_000_003)
        h += ids[k:k + m]
    return h


def verbatim_share(pieces: list[np.ndarray], known: np.ndarray, n: int) -> float:
    """The share of the n-grams of `pieces` (each read on its own) whose hash is in `known` (sorted).
    (searchsorted on the sorted hashes: np.isin takes 40x as long on 1 M of them.)"""
    grams = np.concatenate([ngram_hashes(p, n) for p in pieces])
    if len(grams) == 0 or len(known) == 0:
        return math.nan if len(grams) == 0 else 0.0
    at = np.minimum(np.searchsorted(known, grams), len(known) - 1)
    return float((known[at] == grams).mean())


def check_memorisation(mf, trial: str, train_ids: np.ndarray, val_ids: np.ndarray, vocab,
                       ngrams=NGRAMS) -> Memorisation:
    """Sample the model (seeded, temperature 1) and measure how much of it is copied from the train text;
    the val text's own share is the bar to compare with."""
    from charsearch.core.config import SampleOptions
    from charsearch.core.sample import Sampler, cpu_sampling

    with cpu_sampling():
        texts = Sampler(mf, "cpu").generate(SampleOptions(length=MEMO_LENGTH, seed=MEMO_SEED,
                                                          num_samples=MEMO_SAMPLES))
    samples = [np.asarray(vocab.encode(t, what="a sample"), dtype=np.int64) for t in texts]
    shares, reference = {}, {}
    for n in ngrams:
        known = np.sort(ngram_hashes(train_ids, n))
        shares[n] = verbatim_share(samples, known, n)
        reference[n] = verbatim_share([val_ids], known, n)
    return Memorisation(trial, sum(map(len, texts)), shares, reference)


def memorisation_for(sweep: SweepRuns, mf, trial: str) -> tuple[Memorisation | None, str]:
    """The check against the sweep's train split, or (None, why not) when that text is not here as it was."""
    from charsearch.core.data import load_corpus

    params = sweep.parent.data.params
    path = params.get("corpus") or sweep.resolved.get("corpus", "")
    try:
        corpus = load_corpus(path, int(sweep.resolved.get("min_freq", 0)))
    except UsageError as e:
        return None, f"memorisation check skipped: the training text is not here ({e})"
    if params.get("corpus_sha256") and corpus.sha256 != params["corpus_sha256"]:
        return None, f"memorisation check skipped: {corpus.path} has changed since the sweep (sha256 differs)"
    if corpus.vocab != mf.vocab:
        return None, f"memorisation check skipped: the model's vocabulary differs from {corpus.path}'s"
    train, val, _ = corpus.split(float(sweep.resolved["train_frac"]), float(sweep.resolved["val_frac"]))
    return check_memorisation(mf, trial, train, val, corpus.vocab), ""


# ---------------------------------------------------------------------------------------------
# summary and the whole report


def summary(sweep: SweepRuns, study: optuna.Study, imp: dict[str, float], notes: list[str],
            memo: Memorisation | None) -> str:
    df = sweep.trials
    outcomes = df.get(f"tags.{OUTCOME_TAG}", pd.Series(index=df.index, dtype=object)).fillna("running")
    lines = [f"sweep {sweep.experiment!r}, run {sweep.parent.info.run_name} ({sweep.parent.info.run_id}): "
             f"{describe_counts(recorded_counts(sweep.parent, df))}"]
    best = df.iloc[0]  # ranked as `charsearch best` ranks them (a report needs a trial with a model)
    number = {t.user_attrs["mlflow_run_id"]: t.number for t in study.trials}[best["run_id"]]
    v = best["metrics.best_val_loss"]
    lines.append(f"best trial {best[f'tags.{TRIAL_TAG}']} (Optuna trial {number}, {outcomes.iloc[0]}): "
                 f"val loss {loss_text(v)}")
    params = study.trials[number].params
    lines.append("  " + "  ".join(f"{k}={fmt(params[k])}" for k in sweep.space if k in params))
    if imp:
        lines.append("most important params: " + ", ".join(f"{k} {v:.2f}" for k, v in list(imp.items())[:3]))
        caveat = importance_caveat(study)
        lines += [f"  ({caveat})"] if caveat else []
    if memo is not None:
        lines.append(f"memorisation: n-grams found verbatim in the train text, of {memo.chars:,} characters "
                     f"sampled from trial {memo.trial}'s model, and of the val text")
        for label, shares in (("sampled", memo.shares), ("val text", memo.reference)):
            lines.append(f"  {label:<9} " + "  ".join(f"{n}-grams {100 * s:5.1f}%" for n, s in shares.items()))
    lines += notes
    return "\n".join(lines)


@dataclass
class Report:
    experiment: str
    parent_run_id: str
    study_name: str
    storage: str
    out: Path
    files: list[str]
    summary: str
    memorisation: Memorisation | None = None
    importances: dict = field(default_factory=dict)


def run(uri: str, experiment: str | None = None, run_id: str | None = None, out: str | Path | None = None,
        storage: str | None = None, top: int = TOP_CURVES) -> Report:
    """Build the whole report first, then write it: the Optuna study, the parent run's artifacts and
    metrics, and the --out folder."""
    sweep = load_sweep_runs(uri, experiment, run_id)
    out = Path(out) if out else Path("report") / sweep.experiment
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    storage = storage or storage_beside(uri)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    trials = rebuild_trials(uri, sweep)
    study = make_study(trials)  # in memory: drawn from, and stored only once everything worked
    imp, note = importances(study)
    notes = [note] if note else []
    with tempfile.TemporaryDirectory() as tmp:
        pool = shippable(uri, sweep, Path(tmp))
    if not pool:
        raise UsageError(f"no trial of experiment {sweep.experiment!r} has a model yet (none reached its first "
                         f"evaluation)")
    memo, note = memorisation_for(sweep, pool[0].mf, pool[0].trial_id)
    notes += [note] if note else []
    notes += [bias_line(pool)] if bias_line(pool) else []
    text = summary(sweep, study, imp, notes, memo)

    client = client_for(uri)
    parent_id = sweep.parent.info.run_id
    study_name = sweep.parent.info.run_name or parent_id
    with tempfile.TemporaryDirectory() as tmp:
        files = save_figures(figures(study, top, with_importances=bool(imp)) + [tradeoff(pool)], Path(tmp))
        (Path(tmp) / "summary.txt").write_text(text + "\n", encoding="utf-8")
        files.append(Path(tmp) / "summary.txt")

        if storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
            Path(storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        stored = make_study(trials, storage, study_name)
        stored.set_user_attr("mlflow_experiment", sweep.experiment)
        stored.set_user_attr("mlflow_parent_run_id", parent_id)
        stored.set_user_attr("objective", TARGET)
        client.log_artifacts(parent_id, tmp, ARTIFACT_DIR)
        if memo is not None:
            ts = int(time.time() * 1000)
            client.log_batch(parent_id, metrics=[Metric(f"{kind}_{n}gram_share", share, ts, 0)
                                                 for kind, shares in (("memorised", memo.shares),
                                                                      ("val_text", memo.reference))
                                                 for n, share in shares.items() if math.isfinite(share)])
        out.mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copyfile(f, out / f.name)
    return Report(sweep.experiment, parent_id, study_name, storage, out, [f.name for f in files], text, memo, imp)
