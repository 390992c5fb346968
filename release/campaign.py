"""The release campaign: one trunk, trained a stretch at a time in the background, never started over.

    python -m release.campaign start [--threads 1]   # pack what is missing; train the trunk at low priority
    python -m release.campaign status                # steps, img/s, GPix, minutes, the latest validation
    python -m release.campaign cool --steps 3000     # a cooldown branch from the trunk's latest checkpoint
    python -m release.campaign cool --phase 6        # ... or from a stopped phase's last checkpoint
    python -m release.campaign stop [--commit]       # stop the trunk: its weights, a ledger row, the plot
    python -m release.campaign ship [--commit]       # ship the cooled branch if it beats the shipped model
    python -m release.campaign ship --from trunk     # ... or the trunk's latest checkpoint (its EMA weights)
    python -m release.campaign ship --from RUN/best.pt  # ... or a checkpoint: the trunk's best, an arm's last

The trunk runs `release/campaign.yaml` (constant learning rate after a warmup: `optim.schedule: wsd`). Each stretch
is a phase of the ledger: it starts from the committed trunk weights (`TRUNK`, fp16 EMA weights; the optimizer's
moments are rebuilt during the warmup) with the phase number as its data and degradation seed, so no stretch
repeats another's batches. `cool` continues the trunk's latest checkpoint on another core with the rate decaying
linearly to the floor (warmup-stable-decay); its result is the candidate `ship` measures against the shipped model
on the validation sets (never the test sets). State lives in `runs/campaign/`; what a stop earns is committed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from pipeline.command import run_command
from release import ledger, workspace
from release.workspace import ROOT, cpu_words, git_commit, shown

STATE = ROOT / "runs" / "campaign"
TRUNK = ROOT / "weights" / "campaign-trunk.pt"
FIRST_INIT = ROOT / "weights" / "nafnet16-strength-cbsd432.pt"  # the phase the campaign continues
PYTHON = sys.executable


def read_state(kind: str) -> dict | None:
    path = STATE / f"{kind}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def is_running(state: dict | None) -> bool:
    if state is None:
        return False
    try:
        os.kill(state["pid"], 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{state['pid']}")
    if not proc.is_dir():  # no procfs (macOS): the pid alone decides
        return True
    try:
        if proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # ended, not yet reaped by its parent
        cmdline = proc.joinpath("cmdline").read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return False
    return not cmdline or "train/run.py" in cmdline  # empty while `nice` execs python; else a reused pid


def next_phase() -> int:
    return max(p["phase"] for p in json.loads(ledger.LEDGER.read_text())["phases"]) + 1


def launch(kind: str, args: list[str], run_dir: Path, extra: dict) -> dict:
    """Start `train/run.py ARGS` detached at low priority, its output in RUN_DIR.log; record it as KIND."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    command = ["nice", "-n", "10", PYTHON, "train/run.py", *args, "--out", shown(run_dir)]
    with open(run_dir.with_suffix(".log"), "ab") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    state = {"pid": process.pid, "run": str(run_dir), "started": time.time(), "command": " ".join(command)} | extra
    (STATE / f"{kind}.json").write_text(json.dumps(state, indent=1) + "\n")
    print(f"{kind}: started pid {process.pid}: {state['command']}")
    return state


def start(threads: int) -> None:
    running = read_state("trunk")
    if running is not None and is_running(running):
        sys.exit(f"campaign: the trunk is already training (pid {running['pid']}): status or stop")
    shards = workspace.ensure_shards()
    phase = next_phase()
    init = TRUNK if TRUNK.is_file() else FIRST_INIT
    run_dir = STATE / f"phase-{phase}"
    args = ["--shards", shown(shards), "--config", shown(workspace.CONFIG), "--resume", "auto"]
    args += [f"--set=model.init={shown(init)}", f"--set=run.threads={threads}"]
    args += [f"--set=run.seed={phase}", f"--set=loader.seed={phase}"]
    launch("trunk", args, run_dir, {"phase": phase, "threads": threads, "init": shown(init)})


def metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def status() -> None:
    for kind in ("trunk", "cool"):
        state = read_state(kind)
        if state is None:
            print(f"{kind}: none")
            continue
        rows = metrics(Path(state["run"]))
        train = [r for r in rows if "img_per_s" in r]
        vals = [r for r in rows if "val" in r]
        minutes = (time.time() - state["started"]) / 60
        line = f"{kind}: {'training' if is_running(state) else 'stopped'}, {state['run']}, {minutes:.0f} min"
        if train:
            line += f", step {train[-1]['step']:,}, {train[-1]['img_per_s']:.1f} img/s"
        if vals:
            sets = ", ".join(f"{k} {v['psnr_model']:.3f}" for k, v in vals[-1]["val"].get("sets", {}).items())
            line += f"; val at {vals[-1]['step']:,}: {sets}"
        print(line)


def stop_process(state: dict, timeout_s: float = 600) -> None:
    """SIGTERM (the trainer checkpoints after the current step and exits), then wait for it. Not SIGINT: a process
    started from a background shell inherits SIGINT ignored, and one still starting up would not see it."""
    if not is_running(state):
        return
    os.kill(state["pid"], signal.SIGTERM)
    deadline = time.time() + timeout_s
    while is_running(state) and time.time() < deadline:
        time.sleep(1)
    if is_running(state):
        sys.exit(f"campaign: pid {state['pid']} did not stop within {timeout_s:.0f} s")


def stop(commit: bool) -> None:
    state = read_state("trunk")
    if state is None:
        sys.exit("campaign: no trunk has been started (python -m release.campaign start)")
    stop_process(state)
    run_dir = Path(state["run"])
    from model.slim import slim

    slim(run_dir / "last.pt", TRUNK, fp16=True)
    minutes = (time.time() - state["started"]) / 60
    device = f"CPU, {cpu_words()}, {state['threads']} thread{'s' if state['threads'] > 1 else ''}"
    extra = {"wall_minutes": round(minutes), "threads": state["threads"], "weights": shown(TRUNK)}
    command = state["command"].split("nice -n 10 ")[-1].replace(PYTHON, "python")
    end = ledger.measure(str(TRUNK), workspace.CBSD432_SHARDS, workspace.CONFIG)
    ledger.add_phase(state["phase"], run_dir, device, command, extra | {"end": end})
    (STATE / "trunk.json").rename(STATE / f"trunk-phase-{state['phase']}.json")
    print(f"trunk: phase {state['phase']} stopped after {minutes:.0f} min; {shown(TRUNK)} written")
    if commit:
        paths = [TRUNK, ledger.LEDGER, ledger.LEDGER.with_name("ledger.png"), ledger.CARD]
        git_commit(paths, f"Campaign phase {state['phase']}: trunk weights and ledger row")


def snapshot(checkpoint: Path, copy: Path) -> int:
    """Copy a run's checkpoint to `copy`; its step. The step is read from the copy: the run may write a newer
    checkpoint meanwhile (it replaces last.pt atomically every run.ckpt_every steps)."""
    import torch

    copy.write_bytes(checkpoint.read_bytes())
    return int(torch.load(copy, map_location="cpu", weights_only=True)["step"])


def cool(steps: int, threads: int, phase: int | None = None) -> None:
    """Branch from the running trunk's latest checkpoint, or from the last checkpoint of stopped phase PHASE."""
    trunk = read_state("trunk" if phase is None else f"trunk-phase-{phase}")
    if trunk is None or not (Path(trunk["run"]) / "last.pt").is_file():
        where = "start the trunk first" if phase is None else f"no checkpoint of phase {phase} in {STATE}"
        sys.exit(f"campaign: no trunk checkpoint to cool ({where})")
    if is_running(read_state("cool")):
        sys.exit("campaign: a cooldown branch is already training (status)")
    copy = STATE / "branch.tmp"
    step = snapshot(Path(trunk["run"]) / "last.pt", copy)
    run_dir = STATE / f"cool-{trunk['phase']}-{step}"
    run_dir.mkdir(parents=True, exist_ok=True)
    branch = run_dir / "branch.pt"
    copy.replace(branch)
    args = ["--shards", shards_of(trunk), "--resume", shown(branch), "--set=optim.decay_start=" + str(step)]
    args += [f"--set=run.steps={step + steps}", f"--set=run.val_every={steps}", f"--set=run.threads={threads}"]
    launch("cool", args, run_dir, {"phase": trunk["phase"], "from_step": step, "steps": steps, "threads": threads})


def shards_of(trunk: dict) -> str:
    """The shards a trunk trained on, as its command names them (every state has one; phase 5's are not today's)."""
    words = trunk["command"].split()
    return words[words.index("--shards") + 1]


def ship(commit: bool, source: str = "cool") -> None:
    """Measure the finished cooldown branch (or the running trunk's latest checkpoint) and ship it if it wins."""
    from release.ship import ship_candidate

    if source == "trunk":
        trunk = read_state("trunk")
        if trunk is None or not (Path(trunk["run"]) / "last.pt").is_file():
            sys.exit("campaign: no trunk checkpoint to ship (start the trunk first)")
        source = str(Path(trunk["run"]) / "last.pt")
    if source != "cool":
        ship_checkpoint(Path(source), commit)
        return
    cooled = read_state("cool")
    if cooled is None or is_running(cooled):
        sys.exit("campaign: no finished cooldown branch to ship (cool, then wait for it: status)")
    ship_candidate(Path(cooled["run"]) / "last.pt", cooled, commit)


def ship_checkpoint(checkpoint: Path, commit: bool) -> None:
    """Ship a checkpoint of the trunk's phase: its `last.pt` or `best.pt` (the step with the best validation mean), or
    an arm's `last.pt` (a run started from the trunk weights with one setting changed). Recorded under the phase."""
    from release.ship import ship_candidate

    if not checkpoint.is_file():
        sys.exit(f"campaign: no checkpoint {checkpoint} to ship (a run's best.pt or last.pt)")
    trunk = read_state("trunk")
    phase = trunk["phase"] if trunk is not None else next_phase() - 1
    candidate = STATE / "candidate.pt"
    step = snapshot(checkpoint, candidate)
    ship_candidate(candidate, {"phase": phase, "from_step": step, "steps": 0, "checkpoint": shown(checkpoint)}, commit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="action", required=True)
    one = sub.add_parser("start", help="train the trunk in the background")
    one.add_argument("--threads", type=int, default=1, help="torch threads (two 1-thread runs beat one of 2)")
    sub.add_parser("status")
    branch = sub.add_parser("cool", help="a cooldown branch from the trunk's latest checkpoint, in the background")
    branch.add_argument("--steps", type=int, default=3000)
    branch.add_argument("--threads", type=int, default=1)
    branch.add_argument("--phase", type=int, help="branch from this stopped phase's last checkpoint instead")
    for name in ("stop", "ship"):
        sub.add_parser(name).add_argument("--commit", action="store_true", help="git commit what it wrote")
    sub.choices["ship"].add_argument(
        "--from", dest="source", default="cool", help="the candidate: cool (default), trunk, or a checkpoint file"
    )
    args = parser.parse_args(argv)
    STATE.mkdir(parents=True, exist_ok=True)
    if args.action == "start":
        start(args.threads)
    elif args.action == "status":
        status()
    elif args.action == "cool":
        cool(args.steps, args.threads, args.phase)
    elif args.action == "stop":
        stop(args.commit)
    else:
        import torch

        torch.set_num_threads(1)  # beside the trunk: see release.ship.run
        ship(args.commit, args.source)


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m release.campaign"))
