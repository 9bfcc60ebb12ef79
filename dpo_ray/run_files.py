"""The files of a run directory, by name: the campaign writes them, the report and `dpo-ray report` read them."""

CONFIG = "config.json"  # the composed run configuration
RUN_RECORD = "run.json"  # which run the directory holds: command, fingerprint, length, running or finished
PLAN = "plan.txt"  # where each actor went and its memory estimate, as `dpo-ray plan` prints it
METRICS = "metrics.jsonl"  # one row per logged step and per held-out evaluation (and per online round)
ROUNDS = "rounds.jsonl"  # online: one summary row per round; row 0 is the starting policy
DATA_STATS = "data_stats.json"  # offline: pair statistics of the train and eval pairs
SUMMARY_JSON = "summary.json"  # offline: the held-out metrics before and after training
SUMMARY_MD = "summary.md"  # the table the run ends with
REPORT = "report.md"
ATTEMPTS = "attempts.jsonl"  # one row per attempt: when, from which checkpoint, why (start, rerun, a failure)
NONFINITE_ROWS = "nonfinite_rows.jsonl"  # one line per step that met a non-finite loss: its pairs
DRIVER_LOG = "driver.log"  # the driver's log lines of every attempt, and the traceback of a failure that ended one
