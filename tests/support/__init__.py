"""What the tests share that is not a fixture (fixtures: tests/conftest.py): writers of the official data formats
(formats), a real one-node Slurm (slurm), the tiny shared run's settings (tiny_run), the report's notebook network
(notebook), crafted hostile files (crafted)."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout
