"""Pack clean images into WebDataset tar shards (see `shards.format` for the layout)."""
