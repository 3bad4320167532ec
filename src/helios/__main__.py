"""``python -m helios``: the ``helios`` command (see :py:mod:`helios.cli`)."""

from helios.cli.main import console_main

if __name__ == "__main__":
    console_main()
