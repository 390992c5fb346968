"""pipeline.progress: whole lines, never carriage-return redraws, when stderr is not a terminal."""

from __future__ import annotations

from pipeline.progress import LineProgress, progress


def test_a_file_gets_lines_at_the_interval_and_at_the_end(capsys):
    bar = progress(5, "restoring", unit="img", every_s=3600)  # capsys: stderr is not a terminal
    assert isinstance(bar, LineProgress)
    with bar:
        for index in range(5):
            bar.set_postfix(psnr=f"{30 + index}")
            bar.update(1)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) == 1  # within the interval: only the end's line
    assert lines[-1].startswith("restoring 5/5 img [") and "img/s" in lines[-1] and lines[-1].endswith("psnr=34")


def test_every_update_past_the_interval_prints_with_an_eta(capsys):
    with progress(4, "tiles", unit="tile", every_s=0) as bar:
        bar.update(1)
        bar.update(3)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" [")[0] for line in lines] == ["tiles 1/4 tile", "tiles 4/4 tile"]
    assert "ETA" in lines[0] and "ETA" not in lines[1]


def test_log_step_mode_prints_once_per_postfix_only(capsys):
    bar = progress(100, "train", initial=10, every_s=None)
    for _ in range(50):
        bar.update(1)
    bar.set_postfix(loss="0.0200")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train 60/100 it [") and lines[0].endswith("loss=0.0200")


def test_disabled_bars_print_nothing(capsys):
    with progress(3, "quiet", disable=True) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""
