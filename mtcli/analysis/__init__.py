"""What the norm placement does, measured: `mtcli gradients` and `mtcli plot`."""
