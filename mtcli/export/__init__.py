"""Models out of mtcli: `mtcli export BUNDLE --to ctranslate2|huggingface -o DIR` (see command.py)."""
