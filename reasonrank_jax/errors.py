"""The one exception type for bad user input.

The CLI turns an ``InputError`` into one line on stderr and exit code 2; any other
exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input: a missing or malformed file, line or field.

    The message must name what is wrong and where (file, line, field), e.g.
    ``runs/a.trec:17: expected 6 fields 'qid Q0 docid rank score tag', got 4``.
    """

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
        if field is not None:
            where = f"{where} [{field}]" if where else f"[{field}]"
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.line, self.field = path, line, field
