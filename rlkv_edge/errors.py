"""rlkv-edge's errors: one base class, a subclass where a caller needs to tell the cause apart.

Every message is one line that names the problem. The command line maps any `RlkvError` to
`rlkv-edge: error: <message>` and its `exit_code` in one place (`rlkv_edge.cli.app`); library callers
catch `RlkvError` or a subclass.
"""

from __future__ import annotations


class RlkvError(Exception):
    """An error the user can act on; the message is one line."""

    exit_code = 2


class UsageError(RlkvError):
    """A bad option value or a combination of options that does not go together."""


class BudgetError(UsageError):
    """A KV budget that cannot be parsed or met."""


class DataError(RlkvError):
    """A tasks, text or problem file that cannot be used."""


class ModelError(RlkvError):
    """A model that cannot be found, read, or loaded by the runtime."""


class MetadataError(ModelError):
    """A GGUF whose header or rlkv.* metadata is damaged or not supported."""


class ConvertError(RlkvError):
    """A GGUF that cannot be converted (or re-converted) with the heads given."""


class HeadsFileError(RlkvError):
    """A heads file that cannot be read or does not fit the model."""


class NativeLibraryError(RlkvError):
    """The patched llama.cpp library is missing, or llama_cpp already loaded another one."""


class Interrupted(RlkvError):
    """The user pressed Ctrl-C during long work."""

    exit_code = 130
