"""Stage 2, `mtcli train`: the trainer, optimizer and schedules, checkpoints, validation, display."""
