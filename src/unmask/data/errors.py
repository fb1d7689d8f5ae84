"""The one exception type the data package raises for problems a user can fix."""


class DataError(ValueError):
    """A data or tokenizer problem the user can fix; the message names the fix.

    It subclasses ValueError so callers that already catch bad values keep working, and the
    CLI can print the message as a single line instead of a traceback.
    """
