"""`python -m lab.cli` is the `maillab` command too."""

from lab.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
