"""Stage 3, `mtcli translate`: bundles, search, the translator, the CPU fast paths, the command glue."""
