"""The integrations are optional: the package imports without them, and a missing peer names the extra to install."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


def test_package_does_not_import_the_integrations():
    code = ("import sys, normxlogit; bad = [m for m in ('inseq', 'ferret', 'normxlogit.integrations') "
            "if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module, extra", [("inseq", "inseq"), ("ferret", "ferret"), ("captum", "captum")])
def test_missing_peer_names_the_extra(monkeypatch, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    monkeypatch.delitem(sys.modules, f"normxlogit.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'normxlogit\[{extra}\]'"):
        importlib.import_module(f"normxlogit.integrations.{module}")
