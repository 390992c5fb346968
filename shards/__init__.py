"""Pack clean images into WebDataset tar shards (see `pipeline.shard_format` for the layout)."""
