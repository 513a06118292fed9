"""`rendezvous policy-schema` and `rendezvous check-config --policy`, run as real
subprocesses the way a GitOps pipeline runs them: the committed JSON Schema is what the
model generates, a valid file prints the policy it makes (as the admin endpoint shows
it), and an invalid one lists every problem on its own line and exits 2.

jsonschema is not installed in this venv, so no full JSON Schema validator runs here:
the README's example is validated by the pydantic model the schema is generated from,
and checked against the committed schema's structure (every key a declared property of
the right type, unknown keys forbidden) by `_schema_problems` below."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from pydantic import BaseModel

from rendezvous.policy.document import Policy, PolicyError, parse_policy
from tests.support.process import cli_env, one_line_failure, run_cli
from tests.support.server import running_server, test_settings
from tests.support.tokens import token

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "schemas" / "policy.schema.json"
README = ROOT / "README.md"
REGENERATE = "rendezvous policy-schema --output schemas/policy.schema.json"
NO_TURN_SOURCE = (
    "ice.turn_urls: no TURN credential source is configured "
    "(WEBRTC_TURN_CREDENTIALS_FILE, WEBRTC_TURN_SECRET or the static pair)"
)


def readme_example() -> str:
    """The example policy file in the README's Live policy section (its first yaml block)."""
    section = README.read_text().split("\n## Live policy\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert match, "no ```yaml block in the README's Live policy section"
    return match.group(1)


# policy-schema


def test_committed_schema_is_what_policy_schema_prints(tmp_path: Path) -> None:
    result = run_cli("policy-schema", env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert SCHEMA.read_text() == result.stdout, (
        f"schemas/policy.schema.json differs from the Policy model: run `{REGENERATE}`"
    )


def test_policy_schema_output_writes_sorted_indented_json(tmp_path: Path) -> None:
    written = tmp_path / "policy.schema.json"
    result = run_cli("policy-schema", "--output", str(written), env=cli_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    expected = json.dumps(Policy.model_json_schema(), indent=2, sort_keys=True) + "\n"
    assert written.read_text() == expected


def test_schema_forbids_unknown_fields_in_every_object() -> None:
    schema = json.loads(SCHEMA.read_text())
    objects = {"(root)": schema, **schema["$defs"]}
    assert {name: node.get("additionalProperties") for name, node in objects.items()} == {
        name: False for name in objects
    }


def test_readme_example_fits_the_committed_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    assert _schema_problems(schema, schema, yaml.safe_load(readme_example()), "") == []


def test_schema_check_reports_an_unknown_field() -> None:
    """The structural check above can fail: a misspelt field deep in the file is caught."""
    schema = json.loads(SCHEMA.read_text())
    data = yaml.safe_load(readme_example())
    data["rooms"]["overrides"][1]["max_participant"] = 3
    data["limits"]["rate_limit_burst"] = "many"
    assert _schema_problems(schema, schema, data, "") == [
        "rooms.overrides[1].max_participant: not allowed",
        "limits.rate_limit_burst: expected integer or null, got string",
    ]


def test_readme_example_is_a_valid_policy_stating_every_field() -> None:
    policy = parse_policy(readme_example().encode())
    assert _unset_fields(policy, "") == []
    assert policy.rooms.overrides[0].match == "1on1-*"


def test_policy_model_refuses_an_unknown_field() -> None:
    text = readme_example() + "max_participants: 5\n"  # belongs under rooms
    with pytest.raises(PolicyError) as refused:
        parse_policy(text.encode())
    assert refused.value.errors == ["max_participants: Extra inputs are not permitted"]


_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    return _JSON_TYPES[type(value)]


def _schema_problems(
    root: dict[str, Any], node: dict[str, Any], data: Any, where: str
) -> list[str]:
    """What a JSON Schema validator would say about `data`'s keys and types under `node`
    ($ref, anyOf, type, properties, additionalProperties, items; not ranges or patterns)."""
    node = _resolve(root, node)
    actual = _json_type(data)
    if "anyOf" in node:
        branches = [_schema_problems(root, branch, data, where) for branch in node["anyOf"]]
        if [] in branches:
            return []
        types = [_resolve(root, branch).get("type") for branch in node["anyOf"]]
        if actual in types:  # the branch for this type explains what is wrong inside
            return branches[types.index(actual)]
        return [f"{where}: expected {' or '.join(map(str, types))}, got {actual}"]
    wanted = node.get("type")
    if wanted is not None and actual != wanted and (wanted, actual) != ("number", "integer"):
        return [f"{where}: expected {wanted}, got {actual}"]
    problems: list[str] = []
    if isinstance(data, dict):
        properties = node.get("properties", {})
        for key, value in data.items():
            path = f"{where}.{key}".lstrip(".")
            if key in properties:
                problems += _schema_problems(root, properties[key], value, path)
            elif node.get("additionalProperties") is False:
                problems.append(f"{path}: not allowed")
    elif isinstance(data, list) and "items" in node:
        for index, item in enumerate(data):
            problems += _schema_problems(root, node["items"], item, f"{where}[{index}]")
    return problems


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in node:
        resolved: dict[str, Any] = root["$defs"][node["$ref"].rsplit("/", 1)[1]]
        return resolved
    return node


def _unset_fields(model: BaseModel, where: str) -> list[str]:
    """The fields of `model` (recursively) that the file left out."""
    unset = []
    for name in type(model).model_fields:
        path = f"{where}.{name}".lstrip(".")
        value = getattr(model, name)
        if name not in model.model_fields_set:
            unset.append(path)
        elif isinstance(value, BaseModel):  # a section
            unset += _unset_fields(value, path)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, BaseModel):
                    unset += _unset_fields(item, f"{path}[]")
    return unset


# check-config --policy


def _check(
    tmp_path: Path, text: str, **variables: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path, run_cli("check-config", "--policy", str(path), env=cli_env(tmp_path, **variables))


def _errors(path: Path, result: subprocess.CompletedProcess[str]) -> list[str]:
    """The problems an invalid check printed: exit 2, nothing on stdout, each on its own
    stderr line with the file's prefix."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    prefix = f"rendezvous: policy {path}: "
    lines = result.stderr.splitlines()
    assert lines, "no error printed"
    assert all(line.startswith(prefix) for line in lines), result.stderr
    return [line.removeprefix(prefix) for line in lines]


# Asks for what this environment (no TURN credentials, 64 KiB frames) does not allow.
TOO_MUCH = 'ice:\n  turn_urls: ["turn:127.0.0.1:3478"]\nlimits:\n  max_message_bytes: 131072\n'

OVERRIDES = """\
rooms:
  overrides:
    - match: "1on1-*"
      max_participants: 2
limits:
  max_message_bytes: 32768
allowed_origins: []
"""


def test_check_policy_prints_the_policy_it_makes_over_the_environment(tmp_path: Path) -> None:
    path, result = _check(
        tmp_path,
        OVERRIDES,
        WEBRTC_STUN_URLS="stun:127.0.0.1:3478",
        WEBRTC_RATE_LIMIT_BURST="40",
        WEBRTC_ALLOWED_ORIGINS="https://env.example.org",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    shown = json.loads(result.stdout)
    assert shown["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    policy = shown["policy"]
    assert policy["rooms"] == {
        "max_participants": 50,
        "overrides": [{"match": "1on1-*", "max_participants": 2}],
    }
    assert policy["limits"]["max_message_bytes"] == 32768  # stated by the file
    assert policy["limits"]["rate_limit_burst"] == 40  # left out: the environment's
    assert policy["ice"]["stun_urls"] == ["stun:127.0.0.1:3478"]
    assert policy["allowed_origins"] == []  # [] is a value: any origin, over the variable


def test_printed_policy_read_back_as_a_file_makes_the_same_policy(tmp_path: Path) -> None:
    """The output names fields as the file does, so it is itself a complete policy file."""
    env = {"WEBRTC_STUN_URLS": "stun:127.0.0.1:3478", "WEBRTC_TURN_SECRET": "turn-secret"}
    _, first = _check(tmp_path, readme_example(), **env)
    assert first.returncode == 0, first.stderr
    printed = json.loads(first.stdout)["policy"]
    _, second = _check(tmp_path, json.dumps(printed), **env)  # JSON is YAML
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout)["policy"] == printed


async def test_check_policy_prints_what_the_admin_endpoint_shows(tmp_path: Path) -> None:
    path, result = _check(tmp_path, readme_example(), WEBRTC_STUN_URLS="", WEBRTC_TURN_SECRET="s")
    assert result.returncode == 0, result.stderr
    settings = test_settings(policy_file=path, turn_secret="s")
    async with running_server(settings) as server, httpx.AsyncClient(timeout=5) as http:
        answer = await http.get(
            f"{server.http}/webrtc/admin/policy",
            headers={"Authorization": f"Bearer {token('ops', roles=['admin'])}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["policy"] == json.loads(result.stdout)["policy"]
    assert answer.json()["status"]["sha256"] == json.loads(result.stdout)["sha256"]


INVALID = {
    "yaml-syntax": ("rooms:\n  max_participants: [\n", {}, "not YAML: "),
    "unknown-field": (
        "rooms:\n  max_participant: 5\n",
        {},
        "rooms.max_participant: Extra inputs are not permitted",
    ),
    "bad-value": (
        'rooms:\n  overrides:\n    - match: "1on1-*"\n      max_participants: 0\n',
        {},
        "rooms.overrides[0].max_participants: Input should be greater than or equal to 1",
    ),
    "above-process-limit": (
        "limits:\n  max_message_bytes: 32768\n",
        {"WEBRTC_MAX_MESSAGE_BYTES": "16384"},
        "limits.max_message_bytes: 32768 is above WEBRTC_MAX_MESSAGE_BYTES (16384); "
        "a policy may lower it, never raise it",
    ),
    "turn-without-credentials": (
        'ice:\n  turn_urls: ["turn:127.0.0.1:3478"]\n',
        {},
        NO_TURN_SOURCE,
    ),
}


@pytest.mark.parametrize(("text", "variables", "error"), INVALID.values(), ids=INVALID.keys())
def test_check_policy_refuses_an_invalid_file(
    tmp_path: Path, text: str, variables: dict[str, str], error: str
) -> None:
    path, result = _check(tmp_path, text, **variables)
    [line] = _errors(path, result)
    assert line.startswith(error), line


ALLOWED_BY_THE_ENVIRONMENT = {
    "above-process-limit": {"WEBRTC_MAX_MESSAGE_BYTES": "65536"},
    "turn-without-credentials": {"WEBRTC_TURN_SECRET": "turn-secret"},
}


@pytest.mark.parametrize(
    ("case", "variables"), ALLOWED_BY_THE_ENVIRONMENT.items(), ids=ALLOWED_BY_THE_ENVIRONMENT
)
def test_the_environment_decides_what_a_policy_may_ask(
    tmp_path: Path, case: str, variables: dict[str, str]
) -> None:
    """The same files pass where the process allows them: the check is against the
    environment, not a fixed rule."""
    _, result = _check(tmp_path, INVALID[case][0], **variables)
    assert result.returncode == 0, result.stderr


def test_check_policy_lists_every_problem_of_the_file(tmp_path: Path) -> None:
    text = (
        "rooms:\n  overides: []\n  max_participants: 0\n"
        'allowed_origins: ["app.example.org"]\nice:\n  bundle_policy: sometimes\n'
    )
    path, result = _check(tmp_path, text)
    errors = _errors(path, result)
    assert [error.split(":", 1)[0] for error in errors] == [
        "ice.bundle_policy",
        "rooms.max_participants",
        "rooms.overides",
        "allowed_origins[0]",
    ]


def test_check_policy_lists_every_conflict_with_the_environment(tmp_path: Path) -> None:
    path, result = _check(tmp_path, TOO_MUCH)
    assert _errors(path, result) == [
        "limits.max_message_bytes: 131072 is above WEBRTC_MAX_MESSAGE_BYTES (65536); "
        "a policy may lower it, never raise it",
        NO_TURN_SOURCE,
    ]


def test_check_policy_refuses_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = run_cli("check-config", "--policy", str(path), env=cli_env(tmp_path))
    assert _errors(path, result) == [f"cannot read {path}: No such file or directory"]


# plain check-config with WEBRTC_POLICY_FILE


def test_check_config_shows_the_policy_file_in_force(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text('ice:\n  stun_urls: ["stun:127.0.0.1:3478"]\n' + OVERRIDES)
    env = cli_env(tmp_path, WEBRTC_POLICY_FILE=str(path), WEBRTC_ALLOWED_ORIGINS="https://x.org")
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["policy"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert shown["policy"]["policy"]["rooms"]["overrides"] == [
        {"match": "1on1-*", "max_participants": 2}
    ]
    assert shown["effective"]["stun_urls"] == ["stun:127.0.0.1:3478"]
    assert shown["effective"]["allowed_origins"] == "any"  # the file's [] over the variable


def test_check_config_without_a_policy_file_shows_no_policy(tmp_path: Path) -> None:
    result = run_cli("check-config", env=cli_env(tmp_path, WEBRTC_STUN_URLS=""))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert "policy" not in shown
    assert shown["effective"]["stun_urls"] == []


def test_check_config_refuses_an_invalid_policy_file_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(TOO_MUCH)
    result = run_cli("check-config", env=cli_env(tmp_path, WEBRTC_POLICY_FILE=str(path)))
    assert result.returncode == 2
    line = one_line_failure(result)
    assert line.startswith(f"rendezvous: invalid configuration: WEBRTC_POLICY_FILE: {path}: ")
    assert "limits.max_message_bytes: 131072 is above" in line
    assert NO_TURN_SOURCE in line
