"""bench: the suite's machinery on tiny settings, the environment report, and the GPU check script without CUDA.

The suite runs for real (real shards packed here, the real loaders, a real training run of a tiny model); only its
sizes are shrunk so it takes seconds. Nothing here asserts a speed: the figures depend on the machine.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import PIL
import pytest
import torch
from conftest import TINY_MODEL_AND_LOADER, natural_image
from PIL import Image

from bench import env, step
from bench.__main__ import main as bench_main
from bench.suite import SECTIONS, SuiteConfig, main, run_suite
from release import gpu_summary
from shards.pack import pack

ROOT = Path(__file__).resolve().parents[1]
TINY_SETS = (*TINY_MODEL_AND_LOADER, "val.crop=48", "val.variants=1", "run.threads=1")
SETTINGS = SuiteConfig(
    quick=True,
    repeats=2,
    loader_steps=2,
    stage_limit=4,
    degrade_batches=(2, 4),
    degrade_patches=(32, 128),  # 128 px is larger than every image: skipped with the reason
    curve_workers=(0, 4),  # more workers than the 2 shards: the map-style loader serves any count
    curve_batches=(2, 4),
    curve_patches=(16,),
    train_step_steps=1,
    train_steps=4,
    train_log_every=2,
    backends=("torch",),
    train_sets=TINY_SETS,
    call_s=0.01,
)


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench")
    (root / "src").mkdir()
    for i in range(10):
        Image.fromarray(natural_image(72, 80, seed=400 + i)).save(root / "src" / f"{i}.png")
    pack(root / "src", root / "shards", val_fraction=0.2, seed=0, min_shards=2)
    return root / "shards"


@pytest.fixture(scope="module")
def suite(shards: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("suite") / "suite.json"
    sections = tuple(s for s in SECTIONS if s != "infer")  # bench infer has its own tests (test_export.py)
    return run_suite(sections, shards, torch.device("cpu"), SETTINGS, out, "python -m bench suite (test)"), out


def timed_entries(result: dict) -> list[dict]:
    """Every measurement dict of the result that carries raw times."""
    sections = result["sections"]
    entries = [row[key] for row in sections["degradation"]["rows"] for key in ("device", "cpu_pool")]
    entries += [p for p in sections["scaling"]["points"] if "skipped" not in p]
    entries += [run["ceiling"] for run in sections["training"]["runs"]]
    return entries


def test_suite_writes_json_markdown_and_plot(suite):
    result, out = suite
    saved = json.loads(out.read_text())
    assert saved == json.loads(json.dumps(result))
    assert result["schema"] == "ml-restoration/bench.suite/2"
    assert result["device"]["device"] == "cpu" and result["device"]["cpu_cores"] == os.cpu_count()
    assert result["versions"]["torch"] == torch.__version__ and result["versions"]["pillow"].endswith(PIL.__version__)
    assert saved["config"]["suite"] == json.loads(json.dumps(asdict(SETTINGS)))
    assert result["config"]["train_default"]["loader"]["batch_size"] == 4
    assert {name: s["status"] for name, s in result["sections"].items()} == dict.fromkeys(
        ("stages", "degradation", "scaling", "training"), "ok"
    )
    table = out.with_suffix(".md").read_text()
    for heading in (
        "python -m bench suite (test)",
        "| stage |",
        "| batch | patch px |",
        "img/s versus batch",
        "| loader | train img/s",
    ):
        assert heading in table
    png = out.with_suffix(".png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert result["files"]["plot"] == str(out.with_suffix(".png"))


def test_every_figure_is_the_median_of_its_repeats(suite):
    result, _ = suite
    entries = timed_entries(result)
    assert len(entries) == 16  # 2 degradation rows and their CPU pools, 11 curve points (any worker count), 1 ceiling
    for entry in entries:
        assert len(entry["times_s"]) == SETTINGS.repeats
        assert entry["median_s"] == pytest.approx(statistics.median(entry["times_s"]), rel=2e-6)
        assert entry["img_per_s"] == pytest.approx(entry["items"] / entry["median_s"], rel=1e-4)


def test_degradation_and_curves_cover_every_point_or_say_why_not(suite):
    result, _ = suite
    degradation, scaling = result["sections"]["degradation"], result["sections"]["scaling"]
    assert [(r["batch"], r["patch"]) for r in degradation["rows"]] == [(2, 32), (4, 32)]
    assert degradation["skipped"][0]["patch"] == 128 and "128 px" in degradation["skipped"][0]["reason"]
    for row in degradation["rows"]:
        assert row["speedup"] == pytest.approx(row["device_mpix_per_s"] / row["cpu_pool_mpix_per_s"], rel=1e-2)
    assert degradation["cpu_workers"] == os.cpu_count()
    points = {(p["axis"], p["x"], p["series"]): p for p in scaling["points"]}
    assert "img_per_s" in points[("workers", 0, "loader torch")]
    assert "img_per_s" in points[("workers", 4, "loader torch")]  # (skips with a reason: the 128 px row above)
    for axis, values in (("batch", (2, 4)), ("patch", (16,))):
        for x in values:
            for series in ("loader torch", "device degradation", "train step (default model)"):
                assert "img_per_s" in points[(axis, x, series)], (axis, x, series)


def test_training_section_reads_the_trainers_own_metrics(suite):
    result, _ = suite
    (run,) = result["sections"]["training"]["runs"]
    assert run["backend"] == "torch" and run["status"] == "ok"
    train = run["train"]
    assert [w["step"] for w in train["windows"]] == [2, 4]
    assert train["first_window_data_wait_share"] == train["windows"][0]["data_wait_share"]
    assert 0 <= train["data_wait_share"] <= 1 and 0 <= train["run_data_wait_share"] <= 1
    assert train["model"]["name"] == "resnet" and train["loader"]["patch_size"] == 32
    assert run["headroom"] == pytest.approx(run["ceiling"]["img_per_s"] / train["img_per_s"], rel=1e-2)
    assert run["meets_target"] == (train["data_wait_share"] <= step.TARGET_DATA_WAIT_SHARE)


def test_summarise_weights_windows_by_their_duration():
    rows = [
        {"message": "device cpu"},
        {"step": 10, "img_per_s": 10.0, "data_wait_share": 0.5},  # 10 steps x 4 images at 10 img/s: 4 s
        {"step": 20, "img_per_s": 40.0, "data_wait_share": 0.0},  # 1 s
        {"step": 30, "img_per_s": 40.0, "data_wait_share": 0.1},  # 1 s
        {"step": 30, "val": {}},
    ]
    summary = step.summarise(rows, batch_size=4)
    assert summary["run_data_wait_share"] == pytest.approx((0.5 * 4 + 0.1 * 1) / 6, abs=1e-5)
    assert summary["data_wait_share"] == pytest.approx(0.05) and summary["img_per_s"] == 40.0
    assert summary["first_window_data_wait_share"] == 0.5
    with pytest.raises(ValueError, match="no metrics rows"):
        step.summarise([{"message": "x"}], batch_size=4)


def test_gpu_summary_judges_the_measurements(suite):
    result, _ = suite
    waits = gpu_summary.wait_targets(result)
    share = result["sections"]["training"]["runs"][0]["train"]["data_wait_share"]
    assert waits[0]["verdict"] == ("PASS" if share <= 0.02 else "FAIL") and f"{share:.2%}" in waits[0]["measured"]
    speed = gpu_summary.speed_target(result)
    assert speed["verdict"] in ("PASS", "FAIL") and "batch 4 x 32 px (training default)" in speed["measured"]
    assert gpu_summary.speed_target(None)["verdict"] == "not measured"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "x.txt"], "must name a .json file"),
        (["--out", "x.json", "--sections", "stages,bogus"], "unknown ['bogus']"),
        (["--out", "x.json", "--shards", "/nonexistent/shards"], "no manifest.json there"),
    ],
)
def test_suite_cli_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert message in str(stop.value.code) + capsys.readouterr().err


def test_env_report_holds_this_machines_values(tmp_path, capsys):
    from pipeline.loader import resolve_backend

    env.main(["--json", "--out", str(tmp_path / "env.json")])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "env.json").read_text())
    assert report["cpu"]["cores"] == os.cpu_count() and report["torch"] == torch.__version__
    assert report["cuda"]["available"] is torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert report["cuda"]["gpus"] == [] and report["choices"]["train_device"] in ("cpu", "mps")
        assert report["choices"]["export_tensorrt"] is False
    assert report["choices"]["loader_auto"] == resolve_backend("auto")
    assert report["pillow"]["version"] == PIL.__version__
    assert 0 < report["memory"]["available_gib"] <= report["memory"]["total_gib"]
    text = env.render(report)
    assert f"{os.cpu_count()} cores" in text and f"loader      auto -> {resolve_backend('auto')}" in text


def _gpu_check(*args: str, **extra_env: str) -> subprocess.CompletedProcess:
    environ = os.environ | {"PYTHON": sys.executable} | extra_env
    return subprocess.run(
        ["bash", str(ROOT / "release" / "gpu_check.sh"), *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=120,
    )


def test_gpu_check_script_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "release" / "gpu_check.sh")], capture_output=True).returncode == 0


def test_gpu_check_dry_run_lists_every_part_and_runs_nothing(tmp_path):
    done = _gpu_check(str(tmp_path / "out"), "--dry-run")
    assert done.returncode == 0, done.stderr
    for part in ("env", "tests_cuda", "tests_device", "dali_mixed", "degradation", "training", "scaling", "infer"):
        assert f"[dry-run] {part}" in done.stdout
    assert "nothing was run" in done.stdout and not (tmp_path / "out").exists()


def test_gpu_check_without_cuda_exits_cleanly_and_says_so(tmp_path):
    done = _gpu_check(str(tmp_path / "out"), CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "CUDA is absent" in done.stdout
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cuda"] is False and summary["cores"] == os.cpu_count()
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("env", "ok"), ("cuda", "skipped")]
    assert {t["verdict"] for t in summary["targets"]} == {"not measured"}
    assert json.loads((tmp_path / "out" / "env.json").read_text())["cuda"]["available"] is False


def test_step_times_every_mode_and_batch_and_chooses_a_batch(tmp_path, capsys):
    """`python -m bench step`: the trainer's step per (mode, batch) in interleaved rounds, ops, the chosen batch."""
    out = tmp_path / "step.json"
    sets = ["model.kwargs={width: 8}", "loader.patch_size=32", "degrade.codec=float64", "run.threads=1"]
    argv = ["step", "--out", str(out), "--batches", "2,4", "--modes", "fp32,bf16", "--steps", "1", "--rounds", "2"]
    assert bench_main(argv + ["--device", "cpu"] + [arg for s in sets for arg in ("--set", s)]) == 0
    result = json.loads(out.read_text())
    assert [(r["mode"], r["batch"]) for r in result["rows"]] == [("fp32", 2), ("fp32", 4), ("bf16", 2), ("bf16", 4)]
    assert result["chosen_batch"] in (2, 4) and [r["amp"] for r in result["rows"]][::2] == ["fp32", "torch.bfloat16"]
    for row in result["rows"]:
        assert len(row["times_s"]) == 2 and row["median_s"] == pytest.approx(
            statistics.median(row["times_s"]), rel=2e-6
        )
        assert row["img_per_s"] > 0 and 100 < row["ops_per_step"] < 5000
    assert all(r["vs_first_mode"] == 1.0 for r in result["rows"] if r["mode"] == "fp32")
    assert "| fp32 | 2 | 32 |" in out.with_suffix(".md").read_text() and "chosen batch" in capsys.readouterr().out


def test_degradation_compares_every_codec_with_pillow_in_interleaved_rounds(tmp_path):
    out = tmp_path / "degradation.json"
    argv = ["degradation", "--out", str(out), "--batches", "4", "--patches", "32", "--codecs", "float64,int32"]
    assert bench_main(argv + ["--rounds", "2", "--call-s", "0.01", "--pool", "2"]) == 0
    rows = {row["contender"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"pillow", "pillow_pool", "float64", "int32"}
    for codec in ("float64", "int32"):
        assert rows[codec]["vs_pillow"] == pytest.approx(rows[codec]["mpix_per_s"] / rows["pillow"]["mpix_per_s"], 1e-3)
        assert rows[codec]["ops_per_call"]["total"] > 100 and len(rows[codec]["times_s"]) == 2
    assert rows["int32"]["ops_per_call"]["total"] > rows["float64"]["ops_per_call"]["total"]  # butterflies vs GEMM


def test_data_formats_and_the_dispatcher(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    for i in range(3):
        Image.fromarray(natural_image(48, 64, seed=700 + i)).save(tmp_path / "src" / f"{i}.jpg", quality=90)
    out = tmp_path / "formats.json"
    assert bench_main(["data", "--formats", str(tmp_path / "src"), "--out", str(out)]) == 0
    rows = {row["format"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"source_jpeg", "png_level1", "png_level6", "npy"}
    assert rows["npy"]["shard_bytes"] > rows["png_level6"]["shard_bytes"] > rows["source_jpeg"]["shard_bytes"]
    assert bench_main(["bogus"]) == 2 and "python -m bench {data," in capsys.readouterr().out


def test_photo_sizes_flop_limit_table_and_plot(tmp_path):
    """bench infer --photo's photo sizes (4:3), FLOP-limited time (MACs / (threads x clock x 16)), rows and plot;
    the timed runs themselves are not run here (minutes per photo)."""
    from bench import infer, merge_runs

    assert infer.photo_hw(12) == (3000, 4000) and infer.photo_hw(1) == (864, 1152)
    limit = infer.flop_limit_s_per_mp(19.9e9, 2)
    assert limit == pytest.approx(19.9e9 / (2 * env.clock_hz() * infer.MACS_PER_CYCLE))
    measured = {"peak_rss_mib": 900.0, "size": "x", "passes": 1.3, "seconds": 1.0}
    runs = {mp: [{"s_per_mp": s, **measured}, {"s_per_mp": 2 * s, **measured}] for mp, s in ((1, 2.0), (12, 2.4))}
    rows = [merge_runs({"runtime": "openvino", "megapixels": mp}, found, limit) for mp, found in runs.items()]
    rows.append(merge_runs({"runtime": "torch", "megapixels": 12}, [{"error": "exit 1"}]))
    assert rows[1]["s_per_mp"] == 3.6 and rows[1]["min_s_per_mp"] == 2.4
    assert rows[1]["vs_flop_limit"] == round(3.6 / limit, 1) and "exit 1" in infer.photo_markdown(rows, limit)
    infer.plot(rows, limit, tmp_path / "photo.png")
    assert (tmp_path / "photo.png").stat().st_size > 1000
