"""Errors a user can act on. Their message is the whole story, on one line."""


class RFMError(Exception):
    """Base of every error whose message is meant for the user as it is."""


class RFMConfigError(RFMError, ValueError):
    """A setting, preset or segment grid is invalid; the message names the field or file."""


class RFMInputError(RFMError, ValueError):
    """The transaction input cannot be used; the message names the column, value or path."""
