"""`python -m demo [--model PATH] [--port N] [--device auto|cpu|cuda|mps] [--precision fp32|fp16|bf16]`: serve the
demo on http://127.0.0.1:PORT (local only, no share link, analytics off)."""

from __future__ import annotations

import argparse
import shutil
import socket
import sys

from demo.core import DEFAULT_MAX_PIXELS
from infer.backends import PRECISIONS, RUNTIMES, open_backend
from pipeline.command import CommandError, run_command


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--model", default=None, help="checkpoint or exported model (default: the shipped model)")
    parser.add_argument("--port", type=int, default=7860, help="local port (default 7860)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS), help="inference precision")
    parser.add_argument(
        "--runtime",
        default="auto",
        choices=RUNTIMES,
        help="for the shipped model or an ONNX file (default auto: the fastest available here)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=DEFAULT_MAX_PIXELS,
        help=f"refuse uploads with more pixels; below it large images run in tiles (default {DEFAULT_MAX_PIXELS:,})",
    )
    return parser.parse_args(argv)


def check_port(port: int) -> None:
    """A port in use is one line, before seconds of loading the model and Gradio."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it: TIME_WAIT is no conflict
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise CommandError(
                f"port {port} on 127.0.0.1 is not free ({err.strerror}): another program (an earlier demo?) uses it; "
                "stop it or choose another --port"
            ) from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_port(args.port)
    try:
        backend = open_backend(args.model, device=args.device, precision=args.precision, runtime=args.runtime)
    except (OSError, ValueError, RuntimeError) as err:  # missing file, unknown type, unusable device
        raise SystemExit(f"python -m demo: cannot open the model: {err}") from err
    from demo.app import build_app, remove_uploads, serve  # imports Gradio only once the model is known to open

    app = build_app(backend, max_pixels=args.max_pixels)
    if backend.chosen:
        print(f"runtime: {backend.chosen}")
    print(f"serving {backend.name} on {backend.device} at http://127.0.0.1:{args.port} (Ctrl+C stops)")
    try:
        serve(app, port=args.port, block=True)
    except KeyboardInterrupt:  # Ctrl+C before Gradio's own loop catches it (e.g. during start-up)
        print("stopped")
    finally:  # also on SIGTERM (docker stop, systemd), which pipeline.command raises as Terminated
        shutil.rmtree(app.handlers.workroot, ignore_errors=True)
        remove_uploads(app)  # users' originals must not outlive the demo


if __name__ == "__main__":
    sys.exit(run_command(main, "python -m demo"))
