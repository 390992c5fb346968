"""The trainer: `python train/run.py --shards DIR` (see train/run.py)."""
