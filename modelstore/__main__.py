"""Entry point of `modelstore` and `python -m modelstore`.

`--version` is answered before Typer (and everything else) is imported, so it costs no
more than the interpreter's own start-up.
"""

import sys


def run() -> None:
    if sys.argv[1:] == ["--version"]:
        from modelstore import __version__

        print(f"modelstore {__version__}")
        return
    from modelstore.cli import main

    main()


if __name__ == "__main__":
    run()
