"""Built-in trainers (one trainer, one config per module), all on a DeepSpeed engine."""
