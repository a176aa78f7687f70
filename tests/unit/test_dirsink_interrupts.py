"""A run told to stop keeps no bundle, even when its Interrupted was lost in a finalizer (Python
ignores an exception raised there) and the run went on to the commit."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bundler import interrupts
from bundler.dirsink import DirectorySink
from bundler.errors import Interrupted
from bundler.parts import Part


def test_a_signalled_run_does_not_commit(tmp_path: Path) -> None:
    sink = DirectorySink(tmp_path, fsync=False)
    sink.begin("img", 2)
    for i in range(2):
        sink.put_part(Part(i, os.urandom(100)))
    interrupts.clear()
    interrupts.note(signal.SIGTERM)  # what the handler does before raising
    try:
        with pytest.raises(Interrupted):
            sink.commit(["img.part.0", "img.part.1"], "img.manifest.xml", b"<manifest/>")
        sink.abort()
    finally:
        interrupts.clear()
    assert os.listdir(tmp_path) == []
