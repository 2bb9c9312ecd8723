"""The one check of a Hub repo id: `namespace/name`, as the Hub accepts it."""

from __future__ import annotations

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

REPO_ID_RULE = (
    "use letters, digits, '-', '_' and '.', at most 96 characters, not starting or ending with '-' or '.', "
    "without '--' or '..'"
)
"""The Hub's naming rule in words, for messages."""


def is_repo_id(repo_id: str) -> bool:
    """Whether `repo_id` is `namespace/name` with names the Hub accepts (no request is made)."""
    if repo_id.count("/") != 1:
        return False
    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        return False
    return True
