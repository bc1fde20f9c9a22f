"""The one error type that means "the user asked for something wrong": main prints it as one line."""


class UserError(Exception):
  """Bad input from the user (flag, config key, dataset, platform). The message says what and how to fix it."""
