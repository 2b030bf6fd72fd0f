"""Errors meant for people: the message says which file, line or key, and what was expected."""


class UserError(ValueError):
    """Bad input or config: reported without a traceback, exit status non-zero, nothing written."""
    kind = "input error"


class DivergenceError(UserError):
    """Training produced a non-finite loss, reward, advantage or gradient norm: the stage stops and
    saves nothing; the message names the step and the quantities."""
    kind = "training diverged"


class StalledError(UserError):
    """Training ran its steps and changed no weight (a learning rate of 0, frozen parameters, a
    loss that does not reach them): the stage stops and saves nothing."""
    kind = "training changed nothing"
