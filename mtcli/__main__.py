"""`python -m mtcli` entry point (also what `torchrun -m mtcli` runs)."""

from mtcli.cli import main

if __name__ == "__main__":
    main()
