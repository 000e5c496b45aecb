"""The one family of saematch_nb's errors and warnings (a leaf: it imports nothing from the package).

Every exception class the package defines derives from :class:`SaematchError`, and keeps the
built-in base users already catch as a mixin (``ValueError`` for bad input, ``LookupError`` for
unknown names, ``FileNotFoundError`` for missing files, ``RuntimeError`` for services out of
reach), so both ``except saematch_nb.SaematchError`` and ``except ValueError`` work.

Warnings derive from :class:`SaematchWarning`, a ``UserWarning`` that is also a
``SaematchError``: with ``warnings.simplefilter("error")`` an escalated warning is caught by the
same ``except SaematchError`` as the errors. ``tests/test_errors.py`` walks every module and fails
for a class outside the family.
"""

from __future__ import annotations

__all__ = ["SaematchError", "SaematchWarning", "InvalidArgumentError", "ArgumentTypeError"]


class SaematchError(Exception):
    """Base class of every error (and warning) that saematch_nb raises."""


class SaematchWarning(SaematchError, UserWarning):
    """Base class of saematch_nb's warnings (a ``UserWarning``, shown once per place by default)."""


class InvalidArgumentError(SaematchError, ValueError):
    """An argument of the right kind with a value the call cannot use (``n=-1``, ``dpi=0``,
    ``temperature=nan``); the message says what was wrong and what to pass instead."""


class ArgumentTypeError(SaematchError, TypeError):
    """An argument of the wrong kind (a float where a layer or feature index is needed: ``int(1.9)``
    would silently mean 1); the message says what was given and what is expected."""
