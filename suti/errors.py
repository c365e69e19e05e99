"""Errors a user can fix. The CLI prints them as one line and exits 2; any layer (models,
tasks, flows) may raise them without importing the CLI."""


class UserError(Exception):
    """An error the user can fix; printed as one line."""
