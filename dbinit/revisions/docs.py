"""A revision's message (Alembic's ``Script.doc``), read from its file without importing it.

Alembic's ``doc`` is the first paragraph of the stripped module docstring:
``alembic revision -m "create orders"`` writes a docstring whose first line
is ``create orders``, then a blank line. Only the head of the file is tokenized, up to the end of its
first statement, so a file whose body does not compile (which the static
reader does not notice either) still shows its message. Not on the verify
path: ``showmigrations`` reads it.
"""

from __future__ import annotations

import ast
import re
import tokenize
from pathlib import Path

from dbinit.errors import ConfigurationError

_SKIPPED = frozenset({tokenize.ENCODING, tokenize.NL, tokenize.COMMENT})


def module_docstring(path: Path) -> str | None:
    """The module's ``__doc__`` as Python would set it (None: the file has no docstring)."""
    parts: list[str] = []
    try:
        with path.open("rb") as stream:
            for token in tokenize.tokenize(stream.readline):
                if token.type in _SKIPPED:
                    continue
                if token.type == tokenize.STRING:
                    parts.append(token.string)
                    continue
                if token.type not in (tokenize.NEWLINE, tokenize.ENDMARKER):
                    return None  # the first statement is not a string alone ("a".upper(), code)
                break
    except (OSError, SyntaxError, UnicodeDecodeError, tokenize.TokenError) as exc:
        raise ConfigurationError(
            f"{path.name}: its docstring cannot be read: {type(exc).__name__}: {exc}",
            hint="Fix the revision file named above",
        ) from None
    if not parts or any(re.match(r"[A-Za-z]*[fFbBtT]", part) for part in parts):
        return None  # no string, or an f-string or bytes: not a docstring
    value = ast.literal_eval(" ".join(parts))
    return value if isinstance(value, str) else None


def revision_doc(path: Path) -> str:
    """Alembic's ``doc`` for the revision file: the docstring's first paragraph ("" if none)."""
    longdoc = (module_docstring(path) or "").strip()
    return re.split("\n\n", longdoc)[0]
