"""Build evaluation datasets from public question-answering data."""
