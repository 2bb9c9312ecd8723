"""The one place where errors become `gr.Error`.

The browser shows a `gr.Error` as HTML, where a quoted `<lora:x:0.8>` tag would vanish, so
UI handlers (`user_errors`) escape the message; API endpoints (`api_errors`) send it as is,
and `gradio_client` raises it as an `AppError` with that text.

A `LoraSpaceError` carries a message written for the user and is shown as it is.
Anything else is a bug: it is logged with its traceback and the user sees a short
internal-error message that names no paths and no tokens.
"""

from __future__ import annotations

import functools
import html
import inspect
import logging
from collections.abc import Callable
from typing import TypeVar

import gradio as gr

from lora_space.core.errors import LoraSpaceError

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable)

INTERNAL = "Something went wrong inside LoRA Space ({kind}). Nothing you saved was lost; please try again, and report it if it repeats."


def to_gr_error(error: Exception, *, for_html: bool = True) -> gr.Error:
    if isinstance(error, gr.Error):
        return error
    if isinstance(error, LoraSpaceError):
        message = html.escape(str(error), quote=False) if for_html else str(error)
        return gr.Error(message, print_exception=False)
    logger.exception("unexpected error in a handler")
    return gr.Error(INTERNAL.format(kind=type(error).__name__), print_exception=False)


def user_errors(function: F, *, for_html: bool = True) -> F:
    """Wrap a UI handler (plain or generator) so that its errors reach the user as `gr.Error`."""
    if inspect.isgeneratorfunction(function):

        @functools.wraps(function)
        def generator_wrapper(*args, **kwargs):
            try:
                yield from function(*args, **kwargs)
            except Exception as error:
                raise to_gr_error(error, for_html=for_html) from error

        return generator_wrapper  # type: ignore[return-value]

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:
            raise to_gr_error(error, for_html=for_html) from error

    return wrapper  # type: ignore[return-value]


def api_errors(function: F) -> F:
    """Wrap an API endpoint: as `user_errors`, with the message sent as plain text."""
    return user_errors(function, for_html=False)
