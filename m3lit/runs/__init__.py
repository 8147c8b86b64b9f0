"""Runs of a sweep as data: per-run summaries, offline W&B run files, W&B online, and their comparison."""
from .collect import collect_runs, local_runs, wandb_runs
from .comparison import Comparison, compare, format_comparison, label_name, plot, run_labels, write_csv
from .record import SUMMARY_FILE, RunRecord, read_summary, write_summary
from .wandb_file import read_wandb_run

__all__ = ["SUMMARY_FILE", "RunRecord", "Comparison", "collect_runs", "compare", "format_comparison", "label_name",
           "local_runs", "plot", "read_summary", "read_wandb_run", "run_labels", "wandb_runs", "write_csv",
           "write_summary"]
