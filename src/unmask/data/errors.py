"""The one exception type the data package raises for problems a user can fix."""

from unmask.errors import UserError


class DataError(UserError):
    """A data or tokenizer problem the user can fix; the message names the fix (printed as one line)."""
