"""Files that appear complete or not at all: write to a temporary sibling (`NAME.tmp-PID`), then rename it over
`NAME`. A killed writer leaves only the temporary file (the data preprocessor cleans those up on its next run)."""
from __future__ import annotations

import contextlib
import os


def default_file_mode() -> int:
    """0666 minus the umask: what `open()` would give (safetensors and mkstemp write 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def temp_name(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


@contextlib.contextmanager
def atomic_path(path: str):
    """Yields a temporary path to write; on success it is renamed over `path` with the usual permissions, on
    failure removed."""
    path = os.fspath(path)
    tmp = temp_name(path)
    try:
        yield tmp
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str, text: str) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(text)
