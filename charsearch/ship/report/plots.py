"""The report's figures, each drawn by Optuna as a plotly figure (HTML) and a matplotlib one (PNG), and
the trade-off of what can be shipped: val loss against model size and sampling speed."""

from __future__ import annotations

import math
import textwrap
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
import optuna.visualization as ov
import optuna.visualization.matplotlib as om
import plotly.graph_objects as go
from matplotlib.colors import ListedColormap
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from optuna.trial import FrozenTrial, TrialState

from charsearch.ship.report.study import TARGET, importance_caveat
from charsearch.ship.selection import SweepRuns

TOP_CURVES = 10  # learning curves drawn: the best trials only, or the plot is a tangle
MAX_TRADEOFF = 50  # trials whose models are measured for the size/speed plot (each is sampled a moment)


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
        # a plot with nothing of its kind to draw (no finished trial, no labelled series) stays empty; the
        # summary says what the sweep had, so the libraries' own notices of it are not repeated
        warnings.filterwarnings("ignore", "No artists with labels found", UserWarning)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            figs = _draw(study, top, with_importances)
        finally:
            optuna.logging.set_verbosity(verbosity)
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
