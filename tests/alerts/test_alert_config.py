"""`[alerts]` with `[[alerts.rules]]` and `[[alerts.receivers]]`: parsing, bad and unknown keys, secrets from the env."""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_support import write_config

from fleetscore.config import load_config
from fleetscore.errors import ConfigError

GOOD = """
[alerts]
deliver_wait = "3s"
external_url = "http://fleet:8000/"

[[alerts.rules]]
name = "pumps"
device = ["pump-*", "fan-1"]
sensor = "press*"
min_severity = 70
min_duration = "10m"
min_flags = 3
trigger_window = "15m"
recovery_window = "30m"
receivers = ["hook", "am"]

[[alerts.receivers]]
name = "hook"
type = "webhook"
url = "https://hooks.example/x"
timeout = "3s"
max_attempts = 4
backoff = "1s"
token_env = "FLEETSCORE_ALERTS_HOOK_TOKEN"

[[alerts.receivers]]
name = "am"
type = "alertmanager"
url = "http://am:9093"
username = "fleet"
password_env = "FLEETSCORE_ALERTS_AM_PASSWORD"
"""


def test_rules_and_receivers_parse_with_secrets_from_the_environment(home: Path) -> None:
    write_config(home, GOOD)
    alerts = load_config(home, env={"FLEETSCORE_ALERTS_HOOK_TOKEN": "tok-123456"}).alerts
    [rule] = alerts.rules
    assert rule.as_dict() == {"name": "pumps", "device": ["pump-*", "fan-1"], "sensor": ["press*"],
                              "min_severity": 70.0, "min_duration_s": 600.0, "min_flags": 3,
                              "trigger_window_s": 900.0, "recovery_window_s": 1800.0, "receivers": ["hook", "am"]}
    hook, am = alerts.receivers
    assert (hook.token, hook.timeout_s, hook.max_attempts, hook.backoff_s) == ("tok-123456", 3.0, 4, 1.0)
    assert hook.as_dict()["secret_set"] is True and "tok-123456" not in repr(hook) + str(hook.as_dict())
    assert am.password is None and am.as_dict()["secret_set"] is False and am.missing_secret() == \
        "FLEETSCORE_ALERTS_AM_PASSWORD"
    assert alerts.deliver_wait_s == 3.0 and alerts.external_url == "http://fleet:8000"


def test_no_alerts_section_means_no_rules(home: Path) -> None:
    alerts = load_config(home, env={}).alerts
    assert alerts.rules == () and alerts.receivers == ()


RECEIVER = '[[alerts.receivers]]\nname = "hook"\ntype = "webhook"\nurl = "http://h/x"\n'
RULE = '[[alerts.rules]]\nname = "r1"\nreceivers = ["hook"]\n'


@pytest.mark.parametrize(("body", "message"), [
    (RULE + "colour = 'red'\n" + RECEIVER, "[[alerts.rules]] #1 ('r1'): unknown key 'colour'"),
    ('[alerts]\nwhatever = 1\n', "unknown key 'alerts.whatever'"),
    (RECEIVER + 'token = "abc"\n', "[[alerts.receivers]] #1 ('hook'): key 'token' would put a secret in fleetscore.toml"),
    (RECEIVER + 'password = "abc"\n', "key 'password' would put a secret"),
    (RECEIVER + 'token_env = "HOME"\n', "token_env: expected the name of an environment variable starting with FLEETSCORE_"),
    (RECEIVER + 'password_env = "FLEETSCORE_X"\n', "password_env needs a username"),
    (RULE + RULE + RECEIVER, "#2 ('r1'): rule name 'r1' is used twice"),
    ('[[alerts.rules]]\nname = "r1"\n' + RECEIVER, "#1 ('r1'): missing key 'receivers'"),
    ('[[alerts.rules]]\nreceivers = ["hook"]\n' + RECEIVER, "[[alerts.rules]] #1: missing key 'name'"),
    (RULE, "alert rule 'r1' names unknown receiver 'hook' (known: none)"),
    (RULE.replace('"hook"]', '"hook", "hook"]') + RECEIVER, "a receiver is named twice"),
    (RULE + "min_severity = 101\n" + RECEIVER, "min_severity must be between 0 and 100"),
    (RULE + 'min_severity = "high"\n' + RECEIVER, "min_severity: expected a number"),
    (RULE + "min_flags = 0\n" + RECEIVER, "min_flags: expected a positive whole number"),
    (RULE + 'min_duration = "ten minutes"\n' + RECEIVER, "min_duration: bad duration"),
    (RULE + "device = []\n" + RECEIVER, "device: expected a pattern"),
    (RULE + "device = 3\n" + RECEIVER, "device: expected a pattern"),
    (RULE + RECEIVER.replace("webhook", "email"), "type must be one of webhook, alertmanager, got 'email'"),
    (RULE + RECEIVER.replace("http://h/x", "ftp://h/x"), "url: expected an http:// or https:// URL"),
    (RULE + RECEIVER.replace('name = "hook"', 'name = "a b"'), "expected a name of letters"),
    (RULE + RECEIVER + "max_attempts = 1000\n", "max_attempts must be between 1 and 100"),
    (RULE + RECEIVER + 'url_env = "FLEETSCORE_HOOK_URL"\n', "give url, or url_env naming a variable"),
    (RULE + RECEIVER.replace('url = "http://h/x"\n', ""), "give url, or url_env naming a variable"),
    ("[[alerts]]\nx = 1\n", "'alerts' must be a [alerts] section"),
    ('[alerts]\nrules = "all"\n', "rules must be an array of tables ([[alerts.rules]])"),
    ('[alerts]\nrules = [1]\n', "[[alerts.rules]] #1: expected a table"),
])
def test_bad_alert_config_names_file_table_and_key(home: Path, body: str, message: str) -> None:
    write_config(home, body)
    with pytest.raises(ConfigError) as err:
        load_config(home, env={})
    assert message in str(err.value)
    assert str(home / "fleetscore.toml") in str(err.value)


def test_a_bad_alert_config_is_exit_2_without_traceback(home: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_config(home, RULE + "colour = 1\n" + RECEIVER)
    result = cli("alerts", "rules", "--json")
    assert result.exit_code == 2
    assert "unknown key 'colour'" in result.json["error"] and "Traceback" not in result.stderr
