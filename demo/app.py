"""The Gradio interface: tab "Restore" (uploads -> restored PNGs, before/after slider) and tab "Simulate"
(clean image -> real noise + libjpeg -> restored, with PSNR/SSIM against the clean one).

Isolation between users: the event handlers keep nothing between calls. Each call writes into a fresh folder, and
the only memory of it is the caller's own `gr.State` (one per browser session), whose folder is removed when the
session ends or runs a new restoration. The backend is shared read-only. Uploads arrive as file paths
(`gr.File`, so Gradio never re-encodes them) and are decoded by `pipeline.io.load_rgb8`.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import gradio as gr

from demo.core import DEFAULT_MAX_PIXELS, DemoError, make_condition, megapixels, read_upload, restore_to_folder
from demo.core import simulate as simulate_image
from pipeline.io import IMAGE_SUFFIXES

STRENGTH_AUTO = "auto (blind)"
STRENGTH_SET = "set by hand"
SESSION_TTL_S = 3600  # a session's results are deleted this long after its last use, or when it closes
IMAGE_BUTTONS = ["download", "fullscreen"]  # not "share": that one is for Hugging Face Spaces
MAX_FILE_SIZE = "512mb"  # upload size Gradio accepts; the pixel limit is checked after that, before decoding


def remove_results(state: dict[str, Any] | None) -> None:
    """Delete the folder of one session's last restoration (a `gr.State` delete callback)."""
    if state and state.get("folder"):
        shutil.rmtree(state["folder"], ignore_errors=True)


class Handlers:
    """The event handlers, bound to one backend and its limits. They hold no results: see the module docstring."""

    def __init__(self, backend, max_pixels: int = DEFAULT_MAX_PIXELS, workroot: str | Path | None = None):
        self.backend = backend
        self.max_pixels = max_pixels
        self.workroot = Path(workroot) if workroot else Path(tempfile.mkdtemp(prefix="ml-restoration-demo-"))
        self.workroot.mkdir(parents=True, exist_ok=True)

    def condition(self, strength: str, sigma_255: float, quality: float, no_jpeg: bool):
        """The condition chosen on the Restore tab: None (blind) unless the model is conditioned and set by hand."""
        if strength != STRENGTH_SET:
            return None
        return make_condition(self.backend.conditioned, float(sigma_255), 0 if no_jpeg else int(quality))

    def restore(
        self,
        paths: list[str] | None,
        strength: str,
        sigma_255: float,
        quality: float,
        no_jpeg: bool,
        previous: dict[str, Any] | None,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio recognises progress by this default)
    ) -> tuple:
        """Restore every upload. Returns (slider pair, restored PNG paths, compare dropdown, report, new state).

        The session's previous results are deleted only once this run has produced new ones."""
        if not paths:
            raise gr.Error("Upload one or more images first.")
        condition = self.condition(strength, sigma_255, quality, no_jpeg)
        folder = Path(tempfile.mkdtemp(prefix="restore-", dir=self.workroot))
        try:
            results, problems = self._restore_all(paths, folder, condition, progress)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        if not results:
            shutil.rmtree(folder, ignore_errors=True)
            raise gr.Error("\n".join(problems))
        remove_results(previous)
        for problem in problems:
            gr.Warning(problem)
        labels = [f"{i + 1}. {result['name']}" for i, result in enumerate(results)]
        pick = gr.Dropdown(choices=labels, value=labels[0], visible=len(results) > 1)
        state = {"folder": str(folder), "results": results}
        report = restore_report(results, problems, strength if self.backend.conditioned else None)
        report += "".join(f"\n- model note: {note}" for note in self.backend.notes)  # e.g. an fp16 fallback
        return (results[0]["input"], results[0]["restored"]), [r["restored"] for r in results], pick, report, state

    def _restore_all(self, paths: list[str], folder: Path, condition, progress) -> tuple[list[dict], list[str]]:
        """Restore each readable upload into `folder`; returns (results, messages for the unreadable ones)."""
        results, problems = [], []
        for index, path in enumerate(paths):
            progress((index, len(paths)), desc=f"restoring {Path(path).name}")
            try:
                upload = read_upload(path, self.max_pixels)
            except DemoError as err:
                problems.append(str(err))
                continue
            for note in upload.notes:
                gr.Warning(f"{upload.name}: {note}")
            height, width = upload.rgb8.shape[:2]
            tiles = _tile_progress(progress, upload.name, height * width)
            result = restore_to_folder(self.backend, upload, folder, condition, tiles)
            results.append(result | {"size": f"{width}x{height}", "notes": "; ".join(upload.notes)})
        return results, problems

    def compare(self, index: int | None, state: dict[str, Any] | None):
        """The before/after pair of the upload picked in the dropdown (this session's results only)."""
        if not state or index is None or not 0 <= index < len(state["results"]):
            return None
        result = state["results"][index]
        return result["input"], result["restored"]

    def simulate(self, path: str | None, sigma_255: float, quality: float, no_jpeg: bool, seed: float, tell: bool):
        """Degrade the clean upload, restore it. Returns (degraded, restored, clean) uint8 arrays and a metric table."""
        if not path:
            raise gr.Error("Upload a clean image first.")
        try:
            upload = read_upload(path, self.max_pixels)
        except DemoError as err:
            raise gr.Error(str(err)) from err
        for note in upload.notes:
            gr.Warning(f"{upload.name}: {note}")
        quality = 0 if no_jpeg else int(quality)
        sim = simulate_image(self.backend, upload.rgb8, float(sigma_255), quality, int(seed), bool(tell))
        report = simulate_report(sim.metrics, float(sigma_255), quality)
        report += "".join(f"\n\nModel note: {note}" for note in self.backend.notes)
        return sim.degraded8, sim.restored8, upload.rgb8, report


def _tile_progress(progress, name: str, pixels: int):
    """`infer.tiling` progress for one upload, shown in Gradio's bar: tiles done, MPix/s and the time left."""
    start = time.perf_counter()

    def report(done: int, total: int) -> None:
        elapsed = time.perf_counter() - start
        rate = f", {pixels * done / total / 1e6 / elapsed:.2f} MPix/s" if done and elapsed > 0 else ""
        left = f", about {elapsed / done * (total - done):.0f} s left" if done else ""
        progress((done, total), desc=f"{name}: tile {done} of {total}{rate}{left}", unit="tiles")

    return report


def restore_report(results: list[dict[str, str]], problems: list[str], strength: str | None) -> str:
    """Markdown: one line per restored image (size, time, what was converted), then the skipped files."""
    lines = [f"Strength: {strength}." if strength else "Blind model: it estimates the degradation itself."]
    for result in results:
        line = f"- **{result['name']}**: {result['size']}, restored in {result['seconds']} s"
        lines.append(line + (f"; converted: {result['notes']}" if result["notes"] else ""))
    lines += [f"- skipped: {problem}" for problem in problems]
    return "\n".join(lines)


def simulate_report(metrics: dict[str, dict[str, float]], sigma_255: float, quality: int) -> str:
    """Markdown table of PSNR/SSIM of the degraded and restored images against the clean one."""

    def fmt(value: float, digits: int) -> str:
        return "n/a (image under 11 px)" if math.isnan(value) else f"{value:.{digits}f}"

    jpeg = f"JPEG quality {quality} (4:2:0)" if quality else "no JPEG"
    rows = [f"Noise sigma {sigma_255:g} (0-255 scale), then {jpeg}, real libjpeg.", "", "| | PSNR (dB) | SSIM |"]
    rows.append("| --- | ---: | ---: |")
    for name in ("degraded", "restored"):
        rows.append(f"| {name} | {fmt(metrics[name]['psnr_db'], 2)} | {fmt(metrics[name]['ssim'], 4)} |")
    return "\n".join(rows)


def model_summary(backend, max_pixels: int) -> str:
    """Markdown header: which model runs where, its notes (e.g. an FP16 fallback) and the size limit."""
    kind = "conditioned (strength control available)" if backend.conditioned else "blind (no strength control)"
    notes = "".join(f"\n- {note}" for note in backend.notes)
    limit = (
        f"Images up to {megapixels(max_pixels)} ({max_pixels:,} pixels) are restored, large ones in tiles; larger "
        f"ones are refused. Files: {', '.join(IMAGE_SUFFIXES)}."
    )
    chosen = f" Runtime: {backend.chosen}." if getattr(backend, "chosen", "") else ""
    return f"**Model** {backend.name} on {backend.device}, {kind}.{chosen}\n{notes}\n\n{limit}"


def remove_uploads(app: gr.Blocks) -> int:
    """Delete every file Gradio cached for this app (the users' uploaded originals and its own copies) and the
    folders it made for them, once they are empty; returns the number of files removed. Call it when the demo stops."""
    removed = 0
    for files in app.temp_file_sets:
        for name in list(files):
            path = Path(name)
            if path.is_file():
                path.unlink()
                removed += 1
            files.discard(name)
            with contextlib.suppress(OSError):  # Gradio stores each file in a folder of its own (named by its hash)
                path.parent.rmdir()
    return removed


def build_app(backend, max_pixels: int = DEFAULT_MAX_PIXELS, workroot: str | Path | None = None) -> gr.Blocks:
    """The two-tab interface around `backend` (an `infer.backends.Backend`). Analytics are off."""
    handlers = Handlers(backend, max_pixels, workroot)
    cache = (SESSION_TTL_S, SESSION_TTL_S)  # Gradio deletes uploads older than this as it runs; remove_uploads at stop
    with gr.Blocks(title="ml-restoration demo", analytics_enabled=False, delete_cache=cache) as app:
        gr.Markdown("# Restore photos degraded by noise and JPEG")
        gr.Markdown(model_summary(backend, max_pixels), elem_id="model-summary")
        with gr.Tab("Restore", id="restore"):
            _restore_tab(handlers, backend.conditioned)
        with gr.Tab("Simulate", id="simulate"):
            _simulate_tab(handlers, backend.conditioned)
    app.handlers = handlers  # for tests and for cleanup by the caller
    return app


def _restore_tab(handlers: Handlers, conditioned: bool) -> None:
    state = gr.State(None, time_to_live=SESSION_TTL_S, delete_callback=remove_results)
    with gr.Row():
        with gr.Column():
            files = gr.File(
                label="Images",
                file_count="multiple",
                file_types=list(IMAGE_SUFFIXES),
                type="filepath",
                elem_id="restore-input",
            )
            with gr.Group(visible=conditioned):
                strength = gr.Radio([STRENGTH_AUTO, STRENGTH_SET], value=STRENGTH_AUTO, label="Strength")
                sigma = gr.Slider(0, 50, value=15, step=1, label="Noise sigma (0-255 scale)")
                quality = gr.Slider(5, 100, value=40, step=1, label="JPEG quality")
                no_jpeg = gr.Checkbox(False, label="no JPEG")
            run = gr.Button("Restore", variant="primary", elem_id="restore-run")
        with gr.Column():
            slider = gr.ImageSlider(
                label="before / after (drag the handle)",
                type="filepath",
                format="png",
                interactive=False,
                buttons=IMAGE_BUTTONS,
                elem_id="restore-slider",
            )
            pick = gr.Dropdown(label="Compare", type="index", visible=False, interactive=True, elem_id="restore-pick")
            downloads = gr.File(
                label="Restored PNGs", file_count="multiple", interactive=False, elem_id="restore-downloads"
            )
            report = gr.Markdown(elem_id="restore-report")
    run.click(
        handlers.restore,
        inputs=[files, strength, sigma, quality, no_jpeg, state],
        outputs=[slider, downloads, pick, report, state],
        api_name="restore",
    )
    pick.input(handlers.compare, inputs=[pick, state], outputs=slider, api_name="compare")


def _simulate_tab(handlers: Handlers, conditioned: bool) -> None:
    with gr.Row():
        with gr.Column():
            clean_file = gr.File(
                label="Clean image", file_types=list(IMAGE_SUFFIXES), type="filepath", elem_id="simulate-input"
            )
            sigma = gr.Slider(0, 50, value=15, step=1, label="Noise sigma (0-255 scale)")
            quality = gr.Slider(5, 100, value=30, step=1, label="JPEG quality (libjpeg, 4:2:0)")
            no_jpeg = gr.Checkbox(False, label="no JPEG")
            seed = gr.Number(0, precision=0, label="Noise seed")
            tell = gr.Checkbox(False, label="tell the model the true sigma and quality", visible=conditioned)
            run = gr.Button("Degrade and restore", variant="primary", elem_id="simulate-run")
        with gr.Column():
            metrics = gr.Markdown(elem_id="simulate-metrics")
    with gr.Row():
        shown = [
            gr.Image(label=name, format="png", interactive=False, buttons=IMAGE_BUTTONS, elem_id=f"simulate-{name}")
            for name in ("degraded", "restored", "clean")
        ]
    run.click(
        handlers.simulate,
        inputs=[clean_file, sigma, quality, no_jpeg, seed, tell],
        outputs=[*shown, metrics],
        api_name="simulate",
    )


def serve(app: gr.Blocks, port: int | None = None, block: bool = True) -> tuple[Any, str, str]:
    """Launch on 127.0.0.1 only: no share link, no server-side rendering, Gradio's default queue (one job at a
    time per event; every caller still gets only its own result). Returns Gradio's (app, local URL, share URL)."""
    return app.queue().launch(
        server_name="127.0.0.1",
        server_port=port,
        share=False,
        prevent_thread_lock=not block,
        ssr_mode=False,
        max_file_size=MAX_FILE_SIZE,
        show_error=True,
        quiet=not block,
    )
