"""The click group class of every ``fleetscore`` command group, so a subcommand's ``--help`` stays cheap."""

from typing import Any

from typer.core import TyperGroup


class Group(TyperGroup):
    """A typer group whose ``--help`` flag defaults to False rather than None.

    Typer coerces a parameter through a pydantic adapter unless its value is already a bool; an
    absent ``--help`` of a parent group (``fleetscore models list --help``) would import pydantic
    (~100 ms) only to learn that None means no help.
    """

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if option is not None and option.default is None:
            option.default = False
        return option
