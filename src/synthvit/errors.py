"""Errors that are the user's to fix: printed as one line, never as a traceback."""


class UserError(Exception):
    """Bad input (params, paths, files). The message names the problem and the fix."""


class ConfigError(UserError):
    """An invalid value in params.yaml."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"params.yaml: {key}={value!r} is invalid: {allowed}")
