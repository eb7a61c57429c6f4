"""Where the repository is, for the scripts and files the harness runs and writes."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
