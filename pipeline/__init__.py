from pipeline.loader import make_loader  # noqa: F401
