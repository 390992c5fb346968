"""The shipped model's home: how it is trained, measured against the published figures, and written up.

- `campaign.py`: `python -m release.campaign start|status|cool|stop|ship`, the training campaign that never starts
  over (docs/campaign.md): `campaign.yaml` its trunk's config, `workspace.py` its photos, shards and git, `ship.py`
  the comparison with the shipped model and the hand-over;
- `cpu.yaml`, `cpu_continue.yaml`, `gpu.yaml`: earlier phases' training configs (`train/run.py --config ...`);
- `evaluate.py`: `python -m release.evaluate`, every published protocol on CBSD68 and Kodak24 -> docs/results, the
  results block of docs/results.md and the README's headline; `report.py` renders them; `published.json` holds
  the published anchor tables as data;
- `valsets.py`: `python -m release.valsets`, checkpoints side by side on the validation sets (the model card's table);
- `ledger.py`: `python -m release.ledger`, the training ledger of the shipped model, phase by phase;
- `gpu.sh`: train and measure on a CUDA machine within a time budget (docs/gpu_release.md): `gpu_check.sh` (CUDA
  tests and benchmarks, judged by `gpu_summary.py`), then `gpu_release.sh` (calibrate, plan with `gpu_plan.py`, train,
  collect the model).

release/ sits on top: it imports evaluate, model, pipeline, shards and train (through `train/__init__.py`); nothing
imports it.
"""
