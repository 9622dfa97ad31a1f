"""What every benchmark shares: where the shared data is, the command line, and a local Ray."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import ray

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hplt-v2-excerpts"


def arguments(doc: str, **extra: tuple[type, object, str]) -> argparse.Namespace:
    """``--data`` (checked to exist) plus ``extra`` options given as ``name=(type, default, help)``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared HPLT v2 excerpts")
    for name, (kind, default, text) in extra.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=default, help=text)
    args = parser.parse_args()
    if not args.data.is_dir():
        sys.exit(f"no data at {args.data} (the shared HPLT v2 excerpts)")
    return args


def start_ray() -> None:
    """A local Ray on every CPU, quiet, without progress bars (they would distort nothing, but clutter)."""
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
