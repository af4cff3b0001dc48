"""How many faults does a sweep survive? N seeded cycles of a small sweep (6 tiny trials, 2 at a time, local
Ray, recording to an `mlflow server` on loopback with SQLite behind it), each with one fault at a random
moment, then `charsearch sweep FILE --resume` until the sweep finishes:

    driver SIGKILL   the sweep's process killed, at a moment drawn over its whole run (start-up, trials
                     reporting, the end), with Ray's and the trials' processes
    driver SIGTERM   stopped as a scheduler stops a job (handled as Ctrl-C)
    worker SIGKILL   one trial's Ray worker process killed; the sweep goes on (ray.max_failures retries it
                     from its last checkpoint)
    server stopped   the tracking server killed for OUTAGE_S, then started again: the sweep holds its
                     MLflow writes meanwhile and goes on
    driver SIGKILL with writes held
                     the tracking server killed, the driver killed HELD_S later (its writes held), the
                     server started again, then --resume

Then it checks what a user relies on: the sweep finished (one parent run, FINISHED), no trial lost (every
one of num_samples trials has a best_val_loss), none duplicated (trial ids unique in MLflow, and in the
Optuna study `charsearch report` rebuilds), no run left RUNNING, and `best --export` wrote the trial with
the lowest recorded val loss.

    python benchmarks/bench_chaos.py [--cycles 20] [--seed 0] [--points]

With --points each fault is injected at a named point of the sweep (POINTS: its record written, its first
checkpoint, a third trial started) rather than at a moment in seconds: a run that is the same every time,
which the test suite runs as three seeded cycles (tests/test_chaos.py).

Writes the `chaos-cpu` section of BENCHMARKS.md and benchmarks/plots/chaos_cpu.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHAKESPEARE, save_json, table, write_section  # noqa: E402

KINDS = ("driver SIGKILL", "driver SIGTERM", "worker SIGKILL", "server stopped", "driver SIGKILL with writes held")
OUTAGE_S = 20.0
HELD_S = 5.0
SAMPLES = 6
MAX_RESUMES = 5
HANG_S = 240  # a run of this sweep takes under a minute: one still going after this is hung
WORKER_WAIT_S = 60  # a worker kill that finds no trial at its moment waits this long for one to start


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    e.update(RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    return e


def project(folder: Path) -> Path:
    (folder / "data" / "small").mkdir(parents=True)
    (folder / "data" / "small" / "input.txt").write_text(SHAKESPEARE.read_text()[:200_000])
    sweep = yaml.safe_load((ROOT / "sweeps" / "smoke.yaml").read_text())
    sweep.update(name="chaos", data={"corpus": "small"})
    sweep["search"].update(num_samples=SAMPLES, max_concurrent=2)
    sweep["scheduler"] = {"type": "none", "report_every_epochs": 0.05}
    sweep["budget"] = {"sweep_time": 0, "trial_max_epochs": 0.3, "trial_max_time": 0}
    sweep["ray"] = {"storage": "ray_results", "max_failures": 2}
    path = folder / "chaos.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


class Server:
    """An `mlflow server` on loopback for one cycle: SQLite behind it, its artifacts in the cycle's folder."""

    def __init__(self, folder: Path):
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.uri, self.p = folder, f"http://127.0.0.1:{self.port}", None
        (folder / "mlruns").mkdir(exist_ok=True)

    def start(self) -> None:
        log = open(self.folder / "mlflow.log", "a")
        self.p = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.folder}/mlruns/mlflow.db",
             "--artifacts-destination", str(self.folder / "mlartifacts"), "--host", "127.0.0.1", "--port",
             str(self.port), "--workers", "1"], cwd=self.folder, stdout=log, stderr=log, start_new_session=True,
            env={**env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        t0 = time.monotonic()
        while not self.healthy():
            if self.p.poll() is not None or time.monotonic() - t0 > 120:
                raise SystemExit(f"mlflow server did not start:\n{(self.folder / 'mlflow.log').read_text()[-2000:]}")
            time.sleep(0.5)

    def healthy(self) -> bool:
        import urllib.request
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.p is not None:
            kill_session(self.p.pid)
            self.p.wait()
            self.p = None


def session_pids(sid: int) -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid:
                    pids.append(int(d.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


def kill_session(sid: int) -> None:
    for pid in {sid, *session_pids(sid)}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def trial_workers(sid: int) -> list[int]:
    """Ray worker processes of the session that run a trial: Ray titles them after the trainable
    (`ray::ImplicitFunc.train`) from the moment the trial's actor starts, and each keeps its files in a
    private folder named after its pid (search.trial.trial_dir) while it trains."""
    from charsearch.search.trial import TRIAL_DIR_PREFIX
    alive = set(session_pids(sid))
    folders = Path(tempfile.gettempdir()).glob(f"{TRIAL_DIR_PREFIX}*")
    by_folder = {int(f.name[len(TRIAL_DIR_PREFIX):].split("-", 1)[0]) for f in folders} & alive
    return sorted(by_folder | {pid for pid in alive if "ImplicitFunc" in title(pid)})


def title(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def sweep_once(folder: Path, path: Path, kind: str | None, at: float | str, log, server: Server) -> tuple[int, str]:
    """Run (or resume) the sweep; inject `kind` `at` seconds in, or at the named point `at` (POINTS). Returns
    (exit code, phase the fault hit)."""
    args = [sys.executable, "-m", "charsearch", "sweep", str(path)] + (["--resume"] if kind is None and
                                                                     (folder / "ray_results").exists() else [])
    p = subprocess.Popen(args, cwd=folder, env={**env(), "MLFLOW_TRACKING_URI": server.uri}, stdout=log, stderr=log,
                         start_new_session=True)
    phase = "-"
    try:
        if kind is not None:
            reached = wait_for(p, folder, at)
            t0 = time.monotonic()
            if p.poll() is None and not reached:
                phase = "point not reached"
            elif p.poll() is None:
                phase = at if isinstance(at, str) else phase_of(folder)
                if kind == "driver SIGKILL":
                    kill_session(p.pid)
                elif kind == "driver SIGTERM":
                    p.send_signal(signal.SIGTERM)
                elif kind == "server stopped":
                    server.stop()
                    time.sleep(OUTAGE_S)
                    server.start()
                elif kind == "driver SIGKILL with writes held":
                    server.stop()
                    time.sleep(HELD_S)
                    kill_session(p.pid)
                    server.start()
                else:  # a trial may be starting: wait for one a while rather than miss the fault
                    workers = trial_workers(p.pid)
                    while not workers and time.monotonic() - t0 < WORKER_WAIT_S and p.poll() is None:
                        time.sleep(0.5)
                        workers = trial_workers(p.pid)
                    if workers:
                        os.kill(random.choice(workers), signal.SIGKILL)
                    else:
                        phase = "no trial running"
            else:
                phase = "after the end"
        try:
            code = p.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:  # counted, then resumed like a kill
            kill_session(p.pid)
            code = p.wait()
            log.write("\n[bench_chaos: hung, killed]\n")
            log.flush()
    finally:
        kill_session(p.pid)
    return code, phase


def trial_folders(folder: Path) -> list[Path]:
    return list(folder.glob("ray_results/chaos/*/trial_*"))


POINTS = {  # a named point of the sweep -> whether it has been reached, read from what the sweep has written
    "record written": lambda folder: bool(list(folder.glob("ray_results/chaos/*/charsearch.json"))),
    "first checkpoint": lambda folder: bool(list(folder.glob("ray_results/chaos/*/trial_*/checkpoint_*"))),
    "third trial started": lambda folder: len(trial_folders(folder)) >= 3,  # 2 at a time: one has ended
}


def wait_for(p: subprocess.Popen, folder: Path, at: float | str) -> bool:
    """Until `at` seconds have passed, or the named point `at` (POINTS) is reached, or the sweep has ended
    (or run HANG_S). Whether `at` was reached."""
    t0 = time.monotonic()
    reached = POINTS[at] if isinstance(at, str) else (lambda _: time.monotonic() - t0 >= at)
    while p.poll() is None and time.monotonic() - t0 < HANG_S:
        if reached(folder):
            return True
        time.sleep(0.1 if isinstance(at, str) else 0.2)
    return False


def log_text(folder: Path) -> str:
    return (folder / "log.txt").read_text(errors="replace")


def phase_of(folder: Path) -> str:
    """Where the sweep is, read from what it has written: no record yet (start-up), trials, or the end."""
    records = list(folder.glob("ray_results/chaos/*/charsearch.json"))
    if not records:
        return "start-up"
    import json
    try:
        if json.loads(records[-1].read_text()).get("status") != "RUNNING":
            return "end"
    except ValueError:
        return "record being written"
    return "trials reporting"


def check(folder: Path, server: Server) -> dict:
    import mlflow
    mlflow.set_tracking_uri(server.uri)
    df = mlflow.search_runs(experiment_names=["chaos"], max_results=1000)
    parents, trials = df[df["tags.charsearch.kind"] == "sweep"], df[df["tags.charsearch.kind"] == "trial"]
    if "metrics.best_val_loss" not in trials:  # no trial has one
        trials = trials.assign(**{"metrics.best_val_loss": float("nan")})
    valued = trials[trials["metrics.best_val_loss"].notna()]
    through = {**env(), "MLFLOW_TRACKING_URI": server.uri}
    best = subprocess.run([sys.executable, "-m", "charsearch", "best", "--export", "m.pt"], cwd=folder, env=through,
                          capture_output=True, text=True)
    exported = ""
    if best.returncode == 0:
        import torch
        exported = torch.load(folder / "m.pt", weights_only=True)["summary"].get("trial_id", "")
    winner = valued.loc[valued["metrics.best_val_loss"].idxmin(), "tags.ray.trial_id"] if len(valued) else None
    report = subprocess.run([sys.executable, "-m", "charsearch", "report"], cwd=folder, env=through, capture_output=True,
                            text=True)
    import optuna
    studies = optuna.get_all_study_names(f"sqlite:///{folder}/mlruns/optuna.db") if report.returncode == 0 else []
    study_trials = len(optuna.load_study(study_name=studies[0], storage=f"sqlite:///{folder}/mlruns/optuna.db")
                       .trials) if studies else -1
    return {"finished": bool(len(parents) == 1 and (parents.status == "FINISHED").all()),
            "lost": int(SAMPLES - valued["tags.ray.trial_id"].nunique()),
            "duplicated_mlflow": int(len(valued) - valued["tags.ray.trial_id"].nunique()),
            "duplicated_study": max(0, study_trials - SAMPLES) if study_trials >= 0 else -1,
            "running": int((df.status == "RUNNING").sum()), "best_right": bool(exported == winner)}


def run_cycle(i: int, kind: str | None, at: float | str, keep: bool) -> dict:
    """One cycle in a folder of its own: the sweep with `kind` injected `at` seconds in or at the named point
    `at` (None: no fault), resumed until it finishes; then the checks (`passed`). A cycle that fails one keeps
    its folder (so does --keep)."""
    folder = Path(tempfile.mkdtemp(prefix=f"chaos{i}-"))
    path = project(folder)
    server = Server(folder)
    server.start()
    try:
        with open(folder / "log.txt", "w") as log:
            t0 = time.monotonic()
            code, phase = sweep_once(folder, path, kind, at, log, server)
            wall = time.monotonic() - t0
            resumes = 0
            while code != 0 and resumes < MAX_RESUMES and "finished: nothing to resume" not in log_text(folder):
                resumes += 1
                code, _ = sweep_once(folder, path, None, 0, log, server)
        result = {"cycle": i, "fault": kind or "none", "at_s": at if isinstance(at, str) else round(at, 1),
                  "phase": phase, "resumes": resumes,
                  "exit": code, "wall_s": round(wall, 1), "hung": log_text(folder).count("[bench_chaos: hung"),
                  **check(folder, server)}
    finally:
        server.stop()
    result["done"] = result["exit"] == 0 or "finished: nothing to resume" in log_text(folder)  # killed as it ended
    if keep or not passed(result):  # its logs, records and store, to find what went wrong
        result["folder"] = str(folder)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    return result


def passed(result: dict) -> bool:
    """The sweep finished, resumed to its end; nothing lost, duplicated or left RUNNING; best --export right."""
    return (result["finished"] and result["done"] and result["best_right"]
            and not any(result[k] for k in ("lost", "duplicated_mlflow", "duplicated_study", "running")))


def draw(rng: random.Random, kinds: list[str], length: float | None) -> tuple[str, float | str]:
    """A cycle's fault and its moment: seconds within a quiet run's `length`, or (None) a named point."""
    kind = rng.choice(kinds)
    return kind, rng.choice(list(POINTS)) if length is None else 2 + rng.random() * max(1.0, length - 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", action="store_true", help="keep each cycle's folder (printed) to inspect; a cycle "
                    "that fails a check keeps its folder always")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated faults to draw from, of: " + ", ".join(KINDS))
    ap.add_argument("--section", default="chaos-cpu", help="the BENCHMARKS.md section (and JSON file) to write")
    ap.add_argument("--points", action="store_true", help="inject each fault at a named point of the sweep "
                    f"({', '.join(POINTS)}) instead of a moment in seconds")
    args = ap.parse_args()
    kinds = args.kinds.split(",")
    if not set(kinds) <= set(KINDS):
        ap.error(f"--kinds: each of {', '.join(KINDS)}")
    quiet, length = None, None
    if not args.points:  # the sweep's length without a fault: faults are drawn within it
        quiet = run_cycle(-1, None, 0.0, args.keep)
        print(quiet, flush=True)
        length = quiet["wall_s"]
    rng = random.Random(args.seed)
    cycles = []
    for i in range(args.cycles):
        kind, at = draw(rng, kinds, length)
        result = run_cycle(i, kind, at, args.keep)
        cycles.append(result)
        print(result, flush=True)
    save_json(args.section.replace("-", "_"), {"args": vars(args), "quiet": quiet, "cycles": cycles})
    by = Counter((c["fault"], c["phase"]) for c in cycles)
    rows = [{"fault": k, "phase": ph, "cycles": n,
             "finished": sum(c["finished"] for c in cycles if (c["fault"], c["phase"]) == (k, ph)),
             "resumes": sum(c["resumes"] for c in cycles if (c["fault"], c["phase"]) == (k, ph)),
             "trials lost": sum(c["lost"] for c in cycles if (c["fault"], c["phase"]) == (k, ph)),
             "duplicated (MLflow / study)": f"{sum(c['duplicated_mlflow'] for c in cycles if (c['fault'], c['phase']) == (k, ph))}"
                                            f" / {sum(max(0, c['duplicated_study']) for c in cycles if (c['fault'], c['phase']) == (k, ph))}",
             "runs hung": sum(c["hung"] for c in cycles if (c["fault"], c["phase"]) == (k, ph)),
             "runs left RUNNING": sum(c["running"] for c in cycles if (c["fault"], c["phase"]) == (k, ph)),
             "best --export right": sum(c["best_right"] for c in cycles if (c["fault"], c["phase"]) == (k, ph))}
            for (k, ph), n in sorted(by.items())]
    moment = (f"at a named point drawn from: {', '.join(POINTS)}" if args.points else
              f"at a moment drawn over the length of a run without a fault ({length:.0f} s, run first)")
    body = (f"{args.cycles} cycles (seed {args.seed}) of a sweep of {SAMPLES} tiny trials, 2 at a time, local Ray, "
            f"recording to an `mlflow server` on loopback (SQLite behind it; stopped for {OUTAGE_S:.0f} s in 'server "
            f"stopped', and {HELD_S:.0f} s before the driver's kill in 'writes held'); one fault per cycle {moment}, then `--resume` until it finished (at "
            f"most {MAX_RESUMES}). A run still going {HANG_S} s after it started is hung: killed, counted, and resumed. A study the report could not rebuild counts as -1 in the JSON.\n\n" + table(rows))
    title = "Faults a sweep survives (CPU)" + ("" if args.section == "chaos-cpu" else f": {', '.join(kinds)}")
    kinds_flag = ("" if kinds == list(KINDS) else f" --kinds '{args.kinds}'") + (" --points" if args.points else "") + (
        "" if args.section == "chaos-cpu" else f" --section {args.section}")
    write_section(args.section, title, body,
                  f"python benchmarks/bench_chaos.py --cycles {args.cycles} --seed {args.seed}{kinds_flag}")
    print(body)


if __name__ == "__main__":
    main()
