"""`python -m fedmtl.transfer`: runs cli.main."""

from .cli import main

if __name__ == "__main__":
    main()
