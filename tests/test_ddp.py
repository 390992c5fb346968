"""DDP on the CPU with gloo and 2 processes: rank-0-only outputs, disjoint data per rank, DDP's averaged gradient
against one process on the whole batch, and a `torchrun` run of train/run.py stopped by SIGTERM, refused by one
process and resumed by two to the weights of an uninterrupted run, bit for bit.

Two ranks are spawned once per module (`spawned`): they record what they read and their gradients, then train the
uninterrupted reference run with `fit`. Images are "coded": channel 0 is a constant that names the image, so every
crop (flipped or rotated) still tells which image it came from. Every process has a deadline, so a hung collective
fails the test instead of blocking CI.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import natural_image
from PIL import Image

from model import unwrap
from pipeline import make_loader
from pipeline.config import LoaderConfig
from shards.pack import pack
from train import distributed
from train.checkpoint import check_world_size, load
from train.config import OptimConfig, TrainConfig, load_config
from train.loop import fit
from train.run import main as run_main
from train.step import backward, build_state, lr_at

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 16
STEPS = 48  # long enough that SIGTERM after step 4 lands before the end on a fast machine
TINY = [  # a conditioned NAFNet, so the strength control's FiLM also goes through DDP
    "model.name=nafnet",
    "model.kwargs={width: 8, enc_blocks: [1, 1], dec_blocks: [1, 1], middle_blocks: 1, conditioned: true}",
    "loader.batch_size=4",
    "loader.patch_size=32",
    "loader.workers=1",
    "loader.crops_per_image=2",
    f"run.steps={STEPS}",
    "run.log_every=4",
    f"run.val_every={STEPS // 2}",
    "run.ckpt_every=6",
    "run.threads=1",
    "run.sanity_steps=1000",
    "optim.warmup_steps=3",
    "val.crop=48",
    "val.variants=1",
    "log.wandb=off",
]
SETS = [arg for item in TINY for arg in ("--set", item)]
TIMEOUT_S = 120


def coded_image(ident: int) -> np.ndarray:
    """(64, 72, 3) uint8: channel 0 is 10 x ident everywhere, the others a natural image."""
    image = natural_image(64, 72, seed=500 + ident)
    image[..., 0] = 10 * ident
    return image


def ident_of(clean: torch.Tensor) -> list[int]:
    """The image each crop of a (N, 3, P, P) float batch came from."""
    return [round(value * 255 / 10) for value in clean[:, 0, 0, 0].tolist()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """16 coded PNGs: 12 in the train split (4 shards of 3), 4 in val."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "src").mkdir()
    for ident in range(1, IMAGES + 1):
        Image.fromarray(coded_image(ident)).save(root / "src" / f"{ident:02d}.png")
    pack(root / "src", root / "shards", val_fraction=0.25, seed=0, min_shards=4, min_side=32)
    return root / "shards"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, shards: Path, out: Path, *args: str) -> list[str]:
    """The command for `torchrun` on train/run.py, with a c10d rendezvous on a free local port."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--nproc_per_node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{free_port()}",
        "--rdzv-id",
        "test",
        str(ROOT / "train" / "run.py"),
        "--shards",
        str(shards),
        "--out",
        str(out),
        *args,
    ]


def run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=child_env())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def child_env() -> dict[str, str]:
    """One OpenMP thread per process (as torchrun sets it), unbuffered output for the failure messages."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_torchrun_sigterm_and_exact_resume(shards, spawned, tmp_path):
    """(a, d) SIGTERM to torchrun and to its ranks (as a cluster's scancel sends it: each rank gets it twice) stops
    both ranks at one step with one checkpoint; one process refuses that checkpoint with a clear error; `torchrun
    --resume auto` with 2 ranks runs to the end and ends with the weights of an uninterrupted 2-rank run, bit for
    bit, with one metrics line per log step (rank 0 only)."""
    killed = tmp_path / "killed"
    launcher = subprocess.Popen(
        torchrun(2, shards, killed, *SETS),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env=child_env(),
    )
    _wait_for_step(killed / "metrics.jsonl", 4, launcher)
    for pid in [launcher.pid, *children(launcher.pid)]:  # torchrun starts each rank in a session of its own
        os.killpg(pid, signal.SIGTERM)
    output = launcher.communicate(timeout=TIMEOUT_S)[0].decode()
    stopped = load(killed / "last.pt")
    assert 4 <= stopped["step"] < STEPS and stopped["world_size"] == 2, output[-3000:]
    assert sum("stopped by signal" in r.get("message", "") for r in rows(killed)) == 1

    with pytest.raises(SystemExit, match=r"written by a run of 2 process\(es\).*this run has 1.*model\.init="):
        run_main(["--shards", str(shards), "--out", str(killed), "--resume", "auto"])  # one process, no torchrun

    run(torchrun(2, shards, killed, "--resume", "auto"))
    straight, resumed = load(spawned / "straight" / "last.pt"), load(killed / "last.pt")
    assert resumed["step"] == STEPS
    assert all(torch.equal(straight["model"][k], resumed["model"][k]) for k in straight["model"])
    assert all(torch.equal(straight["ema"][k], resumed["ema"][k]) for k in straight["ema"])
    assert [r["step"] for r in rows(killed) if "loss" in r] == list(range(4, STEPS + 1, 4))
    files = [".lock", "best.pt", "config.yaml", "last.prev.pt", "last.pt", "metrics.jsonl", "samples"]
    assert sorted(p.name for p in killed.iterdir()) == files, "no stray temporary checkpoints"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (the ranks torchrun started), read from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _wait_for_step(metrics: Path, step: int, process: subprocess.Popen) -> None:
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and process.poll() is None:
        if metrics.exists() and f'"step": {step},' in metrics.read_text():
            return
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no step {step} in {metrics}: {process.communicate()[0].decode()[-3000:]}")


def loader_config() -> LoaderConfig:
    """One crop per image, no shuffle buffer: the first 6 crops of a rank are the 6 images of its 2 shards."""
    return LoaderConfig(backend="torch", patch_size=32, batch_size=3, crops_per_image=1, workers=0)


def state_config() -> TrainConfig:
    return load_config("cpu", None, TINY)


def fixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8 clean patches, their degraded versions and conditions: the same tensors in every process."""
    generator = torch.Generator().manual_seed(7)
    clean = torch.rand(8, 3, 32, 32, generator=generator)
    degraded = (clean + 0.1 * torch.randn(8, 3, 32, 32, generator=generator)).clamp(0, 1)
    condition = torch.rand(8, 4, generator=generator)
    return clean, degraded, condition


def randomise(model: torch.nn.Module) -> None:
    """Random weights (the same in every process), so zero-initialised tails do not hide any gradient."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(0.1 * torch.randn(param.shape, generator=generator))


def _rank_worker(index: int, port: int, shards: Path, out: Path) -> None:
    """One of 2 spawned ranks, joined through `distributed.init` as under torchrun: records (b) the images its
    loader yields, (c) the gradient after DDP's all-reduce on its half of a fixed batch, then trains the
    uninterrupted reference run with `fit`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(index),
        LOCAL_RANK=str(index),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
    )
    env = distributed.init("cpu", timeout_min=1.0)
    torch.set_num_threads(1)
    loader = make_loader(shards, "train", loader_config(), torch.device("cpu"), env.rank, env.world_size)
    idents = [ident for _ in range(2) for ident in ident_of(next(loader))]
    clean, degraded, condition = fixed_batch()
    half = slice(env.rank * 4, env.rank * 4 + 4)
    state = build_state(state_config(), torch.device("cpu"), env)
    randomise(unwrap(state.model))
    backward(state, clean[half], degraded[half], condition[half], state_config(), None)
    grads = [param.grad.clone() for param in unwrap(state.model).parameters()]
    first_draw = torch.rand(4, generator=state.generator)
    torch.save({"idents": idents, "grads": grads, "draw": first_draw}, out / f"rank{env.rank}.pt")
    fit(state_config(), shards, out / "straight")
    distributed.shutdown(env, clean=True)


@pytest.fixture(scope="module")
def spawned(shards, tmp_path_factory) -> Path:
    """Run the 2 ranks of `_rank_worker` once (spawned processes, a free port, a deadline); returns their folder."""
    out = tmp_path_factory.mktemp("spawned")
    context = mp.start_processes(
        _rank_worker, args=(free_port(), shards, out), nprocs=2, join=False, start_method="spawn"
    )
    deadline = time.time() + TIMEOUT_S
    while not context.join(timeout=1):
        if time.time() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("spawned ranks did not finish in time")
    return out


def test_two_ranks_fit_writes_once(spawned):
    """(a) rank 0 alone writes: one metrics line per log step, one start message, a checkpoint with both ranks'
    RNG states (different degradation streams)."""
    lines = rows(spawned / "straight")
    assert [r["step"] for r in lines if "loss" in r] == list(range(4, STEPS + 1, 4))
    assert [r["step"] for r in lines if "val" in r] == [STEPS // 2, STEPS]
    assert sum("2 ranks (DDP)" in r.get("message", "") for r in lines) == 1
    saved = load(spawned / "straight" / "last.pt")
    assert saved["step"] == STEPS and saved["world_size"] == 2 and len(saved["rng_per_rank"]) == 2
    assert not torch.equal(*(rng["generator"] for rng in saved["rng_per_rank"]))


def test_ranks_read_disjoint_data_and_ddp_averages_gradients(shards, spawned):
    """(b) in one pass the ranks' loaders yield disjoint images that together are those one process reads;
    (c) 2 ranks x batch 4 give, after DDP's all-reduce, the gradient of 1 process on the same 8 samples;
    the degradation generators differ per rank."""
    ranks = [torch.load(spawned / f"rank{r}.pt") for r in range(2)]
    single = make_loader(shards, "train", loader_config(), torch.device("cpu"))
    one_process = [ident for _ in range(4) for ident in ident_of(next(single))]
    seen = [set(rank["idents"]) for rank in ranks]
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1], f"ranks overlap: {seen}"
    assert seen[0] | seen[1] == set(one_process) and len(set(one_process)) == 12

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the ranks; a second thread on a busy 2-core machine is 10-50x slower
    try:
        state = build_state(state_config(), torch.device("cpu"))
        randomise(unwrap(state.model))
        clean, degraded, condition = fixed_batch()
        backward(state, clean, degraded, condition, state_config(), None)
    finally:
        torch.set_num_threads(threads)
    expected = [param.grad for param in unwrap(state.model).parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ranks[0]["grads"], ranks[1]["grads"], strict=True))
    for got, want in zip(ranks[0]["grads"], expected, strict=True):  # float32 sums in another order: ~1e-6
        assert (got - want).norm() <= 1e-4 * want.norm(), "a parameter's gradient differs"
    got, want = torch.cat([g.flatten() for g in ranks[0]["grads"]]), torch.cat([g.flatten() for g in expected])
    assert (got - want).norm() <= 1e-5 * want.norm()
    assert not torch.equal(ranks[0]["draw"], ranks[1]["draw"])


def test_lr_scaling_rules():
    for rule, factor in (("none", 1.0), ("sqrt", 2.0), ("linear", 4.0)):
        cfg = OptimConfig(lr=1e-3, warmup_steps=0, lr_scaling=rule)
        assert lr_at(0, cfg, 100, world_size=4) == pytest.approx(1e-3 * factor)
        assert lr_at(0, cfg, 100, world_size=1) == pytest.approx(1e-3)
    assert load_config("cpu", None, []).optim.lr_scaling == "none"
    with pytest.raises(ValueError, match="optim.lr_scaling"):
        load_config("cpu", None, ["optim.lr_scaling=cubic"])
    assert math.isclose(lr_at(0, OptimConfig(warmup_steps=10, lr_scaling="sqrt"), 100, 9), 3 * 1e-3 / 10)


def test_world_size_guard_and_partial_torchrun_env(monkeypatch):
    check_world_size({"step": 5}, 1, "old.pt")  # checkpoints from before DDP count as one process
    with pytest.raises(ValueError, match=r"written by a run of 2 process\(es\).*this run has 4"):
        check_world_size({"world_size": 2}, 4, "x.pt")
    for name in distributed.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    assert distributed.init("cpu") == distributed.DistEnv() and distributed.world_size_from_env() == 1
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match="RANK set but not LOCAL_RANK, WORLD_SIZE"):
        distributed.init("cpu")
