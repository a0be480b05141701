"""The ``fleetscore`` command line: typer commands that parse, build a Fleet, delegate and print.

Starting it stays cheap (``fleetscore --help`` loads no pyarrow, numpy, polars, api or services):
heavy modules are imported inside the command functions, and the command modules do not use
``from __future__ import annotations``, since typer would compile and evaluate every string
annotation of every command on each start.
"""
