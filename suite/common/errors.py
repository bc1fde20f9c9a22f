"""Errors the user can act on: UserError (bad input, printed as one line) and first_line, the one way to quote an
exception in such a line."""


class UserError(Exception):
  """Bad input from the user (flag, config key, dataset, platform). The message says what and how to fix it."""


def first_line(error: BaseException | str, limit: int = 300) -> str:
  """The first non-empty line of an exception's message (its type's name when it has none), at most `limit` long."""
  text = str(error).strip()
  line = text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else '')
  return line[:limit]
