"""The ``fleetscore`` command line: typer commands that parse, build a Fleet, delegate and print."""
