"""The one place where errors become `gr.Error`.

A `LoraSpaceError` carries a message written for the user and is shown as it is.
Anything else is a bug: it is logged with its traceback and the user sees a short
internal-error message that names no paths and no tokens.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Callable, TypeVar

import gradio as gr

from ..errors import LoraSpaceError

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable)

INTERNAL = "Something went wrong inside LoRA Space ({kind}). Nothing you saved was lost; please try again, and report it if it repeats."


def to_gr_error(error: Exception) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, LoraSpaceError):
        return gr.Error(str(error), print_exception=False)
    logger.exception("unexpected error in a handler")
    return gr.Error(INTERNAL.format(kind=type(error).__name__), print_exception=False)


def user_errors(function: F) -> F:
    """Wrap a handler (plain, generator, or async) so that its errors reach the user as `gr.Error`."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise to_gr_error(error) from error

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise to_gr_error(error) from error

    return wrapper  # type: ignore[return-value]
