"""Task adapters: how a dataset is opened, synthesised and scored for one kind of model."""
