r"""Argument checks shared by the package's constructors."""


def is_int(value, low: int = 1) -> bool:
    r"""Whether :obj:`value` is a Python ``int`` (not a ``bool``, which is
    an ``int`` subclass) of at least :obj:`low`."""
    return isinstance(value, int) and not isinstance(value, bool) and \
        value >= low
