from __future__ import annotations

import pytest

from agent.config import load_settings
from agent.errors import ConfigError


def test_defaults_are_the_papers():
    s = load_settings()
    assert (s.audit.gamma, s.audit.n_slices, s.audit.n_components) == (10.0, 5, 25)


def test_file_environment_and_overrides_in_that_order(tmp_path, monkeypatch):
    path = tmp_path / "agent.yaml"
    path.write_text("audit:\n  gamma: 3\n  n_slices: 4\nembed:\n  batch_size: 8\n")
    monkeypatch.setenv("SLICE_AGENT_AUDIT__GAMMA", "5")
    s = load_settings(path, overrides={"audit": {"n_slices": 2}})
    assert (s.audit.gamma, s.audit.n_slices, s.embed.batch_size) == (5.0, 2, 8)


@pytest.mark.parametrize(
    "text", ["audit:\n  gamma: -1\n", "audit:\n  typo: 1\n", "- a list\n", "a: [unclosed\n"]
)
def test_bad_settings_raise_config_error(tmp_path, text):
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_settings(path)
