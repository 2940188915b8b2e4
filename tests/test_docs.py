"""The docs a user reads first stay true: every option documented, the protocol line shown."""

from __future__ import annotations

from botrix.config import OPTIONS
from tests.conftest import ROOT


def test_every_option_is_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for option in OPTIONS:
        assert f"`{option.flag} {option.metavar}`" in text
        for env in option.envs:
            assert f"`{env}`" in text


def test_readme_starts_with_the_two_commands() -> None:
    head = (ROOT / "README.md").read_text()[:1500]
    assert "make run" in head and "make test" in head


def test_protocol_shows_the_one_command_enqueue() -> None:
    assert "redis-cli RPUSH 'botrix:{default}:pending'" in (ROOT / "docs" / "protocol.md").read_text()
