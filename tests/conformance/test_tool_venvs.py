"""What is installed in LiteLLM's venv runs nothing at interpreter start-up (the March 2026 stealer in litellm
1.82.7/1.82.8 ran from a `.pth` file), and the audit that `make test` applies after installing would notice."""

from __future__ import annotations

from pathlib import Path

from . import tool_venvs
from .tool_venvs import LITELLM


def test_the_installed_venv_passes_its_audit():
    LITELLM.ensure()
    assert tool_venvs.audit(LITELLM.path) == []
    installed = {p.name.split("-")[0].lower() for p in tool_venvs.site_packages(LITELLM.path).glob("*.dist-info")}
    assert "litellm" in installed


def _fake_venv(root: Path, files: dict[str, str], owner: str) -> Path:
    site = root / "lib" / "python3.11" / "site-packages"
    record = site / f"{owner}-1.0.dist-info" / "RECORD"
    record.parent.mkdir(parents=True)
    for name, text in files.items():
        (site / name).write_text(text)
    record.write_text("".join(f"{name},,\n" for name in files))
    return root


def test_the_audit_names_a_start_up_hook_from_any_package_but_the_venvs_own_setuptools(tmp_path):
    hostile = _fake_venv(
        tmp_path / "a",
        {"litellm_init.pth": "import os; os.system('curl ...')\n", "sitecustomize.py": "print('hi')\n"},
        owner="litellm",
    )
    assert tool_venvs.audit(hostile) == [
        "litellm_init.pth (from litellm) would run at every start-up",
        "sitecustomize would run at every start-up (from litellm)",
    ]
    seeded = _fake_venv(tmp_path / "b", {"distutils-precedence.pth": "import os\n"}, owner="setuptools")
    assert tool_venvs.audit(seeded) == []
    claimed = tool_venvs.site_packages(seeded) / "evil-1.0.dist-info" / "RECORD"  # overwrote setuptools' file
    claimed.parent.mkdir()
    claimed.write_text("distutils-precedence.pth,,\n")
    assert tool_venvs.audit(seeded) == ["distutils-precedence.pth (from evil, setuptools) would run at every start-up"]
