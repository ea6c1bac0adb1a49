"""``python -m foretell`` runs the command line."""

from foretell.cli import main

if __name__ == "__main__":  # not when a spawned process (the prediction log's) imports it
    main()
