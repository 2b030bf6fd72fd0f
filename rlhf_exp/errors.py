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


class MissingExtraError(UserError):
    """A feature was asked for whose optional packages are not installed: the message names the
    feature, the missing module and the `pip install` that brings it."""
    kind = "missing package"


def require(module: str, feature: str, extra: str):
    """`import module` for `feature`, or a MissingExtraError naming `pip install 'rlhf-exp[extra]'`."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        if err.name is not None and err.name.split(".")[0] != module.split(".")[0]:
            raise  # the package is there but one of its own imports failed: show that error
        raise MissingExtraError(f"{feature} needs the '{module}' package, which is not installed: "
                                f"pip install 'rlhf-exp[{extra}]'") from err
