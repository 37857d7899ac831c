"""Benchmark harness: grids of ``zoft train`` runs, results tables and plots."""

from zoft.bench.grid import Cell, expand_spec, load_spec
from zoft.bench.report import build_report
from zoft.bench.runner import run_grid

__all__ = ["Cell", "build_report", "expand_spec", "load_spec", "run_grid"]
