"""`python -m nanochat` is the `nanochat` command (torchrun relaunches use this form)."""

from nanochat.cli import main

if __name__ == "__main__":
    main()
