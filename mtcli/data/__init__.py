"""Stage 1, `mtcli prepare`: corpora in, cleaned and binarized splits plus SentencePiece out."""
