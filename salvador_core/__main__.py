"""`python -m salvador_core`: the `salvador` command line (salvador_core/cli.py)."""

from salvador_core.cli import main

if __name__ == "__main__":
    main()
