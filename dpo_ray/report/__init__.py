"""After a run: its records, the failure-mode monitors, plots and a Markdown report."""
