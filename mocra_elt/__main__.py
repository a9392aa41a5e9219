"""Allow `python -m mocra_elt`."""

from mocra_elt.cli.main import main

if __name__ == "__main__":
    main()
