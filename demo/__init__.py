"""Local Gradio demo: restore uploaded photos, or degrade a clean one with real libjpeg and restore it.

`python -m demo [--model PATH] [--port N] [--device auto|cpu|cuda|mps]` serves on 127.0.0.1 only, with no share link
and with Gradio's analytics off, so it opens no outside connection. `demo.core` holds the work (no Gradio),
`demo.app` the interface. Analytics are switched off here, before anything imports Gradio, because Gradio reads
the variable at import time; the Hugging Face Hub client that Gradio brings along is put offline too (it would
otherwise fetch a registry from huggingface.co when a `gradio_client.Client` is made). The demo needs nothing online.
"""

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
