"""glibc's allocator tuning (aepurify.allocator): applied by the command and recorded, turned off
by AEPURIFY_MALLOC=default, a no-op where the C library is not glibc. Each case runs in a fresh
interpreter: the setting is process-wide and applied once."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
PROBE = ("import json; from aepurify.allocator import tune_allocator, allocator_record; "
         "first = tune_allocator(); print(json.dumps([first, tune_allocator(), "
         "allocator_record()]))")


def _probe(**env: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", PROBE], env={**os.environ, **env},
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuning_applies_once_and_is_recorded():
    first, again, record = _probe(AEPURIFY_MALLOC="")
    assert first["allocator"] == "glibc-tuned"
    # above a batch's activations (hundreds of MiB), or glibc's own cap of 32 MiB
    assert first["mmap_threshold"] >= 32 * 1024 * 1024
    assert first["trim_threshold"] >= 1 << 30
    assert again == first == record


def test_environment_turns_it_off():
    first, _, record = _probe(AEPURIFY_MALLOC="default")
    assert first == record == {"allocator": "default", "reason": "AEPURIFY_MALLOC=default"}


def test_not_glibc_leaves_the_allocator_alone(monkeypatch):
    from aepurify import allocator

    monkeypatch.setattr(allocator, "_STATE", {"allocator": "default"})
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("musl", "1.2"))
    monkeypatch.delenv("AEPURIFY_MALLOC", raising=False)
    assert allocator.tune_allocator() == {"allocator": "default", "reason": "not glibc"}
