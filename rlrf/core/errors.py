"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user (a file, a field, a config key): message names what and where."""
