"""The sweep: Ray Tune runs trials of the trainer, Optuna (OptunaSearch) proposes them, ASHA stops bad
ones early on the fair time axis (characters trained), MLflow records everything.

charsearch is the glue here: Tuner, OptunaSearch, ASHAScheduler, Checkpoint, Tuner.restore and the
Callback API do the work. It imports the ML core and the records (charsearch.tracking), never the
selection layer nor the command line. One module per job:

    sweepfile         the sweep file: its schema, validation and defaults
    autosize          the automatically sized sweep: its plan from the corpus and the machine
    calibrate         measured speeds of shapes on this machine, and calibration files
    driver            run(): the steps of a sweep, top to bottom
    ledger            the invocation's state (SweepState) and every trial's outcome (Ledger)
    trial             one trial in a Ray worker: the trainer reporting to Tune
    space             the space, OptunaSearch and its sampler, ASHA, the search's deadline
    resources         Ray's start, CPU and GPU per trial
    storage           where Tune keeps the experiment, and the sweep's record beside it
    resume            what --resume may continue, and the trials' checkpoints and the searcher's count
                      made consistent
    tracking_callback Tune's events into MLflow
    status            the live line
    finish            the best trial trains on to the end of the budget
    ray_compat        every use of Ray's private API
"""

from charsearch.search.driver import SweepOutcome, run

__all__ = ["SweepOutcome", "run"]
