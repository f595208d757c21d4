"""Models into mtcli: `mtcli import huggingface DIR -o BUNDLE` (see marian.py)."""
