"""The README's Quick start, API and Finding and watching logs examples, walked in order against a real stack (nginx,
two Gunicorn APIs, a worker and beat, keys on), as a newcomer would after `make run`.

The demo keys are made as `make run` makes them (var/demo-keys.env, here in a scratch
directory) and loaded with the README's own `export` line; every curl block then runs
verbatim but for the address, and each answer is compared with the `# ...` lines under
its command: the status (written first when it is not 200), the keys and every fixed
value. In those lines a stream entry id (`1795896963513-0`) or a time stands for any of
its form, a row's `id` for any integer, `...` in a string for any text, `...` as an
entry of an object for further keys, and `...` ending a list for more items of the same
shape. Before a block that only reads, the test waits until the drain has stored
everything. Every curl block of those sections must carry a `<!-- tested: NAME -->`
marker, so a new example is walked too.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import redis

from collector.core.settings import load_settings
from collector.devtools.processes import ROOT, wait_until
from collector.pipeline.group import pipeline_stats
from tests.stack import Stack

README = (ROOT / "README.md").read_text()
README_URL = "http://127.0.0.1:18723"
SECTIONS = ("Quick start", "API", "Finding and watching logs")
KEY_VARIABLES = ("COLLECTOR_KEY", "COLLECTOR_READER_KEY", "COLLECTOR_ADMIN_KEY")
# What curl prints after each answer in the walk (a shell function adds it): the status.
STATUS_MARK = "@@readme-walk-status="
CURL_WITH_STATUS = f"curl() {{ command curl -w '\\n{STATUS_MARK}%{{http_code}}\\n' \"$@\"; }}\n"

STREAM_ID = re.compile(r"\d+-\d+")
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


# --- the README ---------------------------------------------------------------------------

def section(title: str, readme: str = README) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert match, f"no section '## {title}' in README.md"
    return match.group(1)


def code_blocks(text: str) -> list[tuple[str | None, str]]:
    """(marker name or None, code) of each fenced block, in order."""
    blocks = []
    for match in re.finditer(r"(<!-- tested: ([\w.-]+)[^>]*-->\s*)?^```\w*\n(.*?)^```", text, re.S | re.M):
        blocks.append((match.group(2), match.group(3)))
    return blocks


def walked_blocks(readme: str = README) -> list[tuple[str, str]]:
    """The curl blocks of the walked sections, in order; each must carry a marker of its own."""
    blocks = [block for title in SECTIONS for block in code_blocks(section(title, readme)) if "curl" in block[1]]
    unmarked = [code.splitlines()[0] for name, code in blocks if name is None]
    assert not unmarked, f"curl blocks without a <!-- tested: NAME --> marker: {unmarked}"
    names = [name for name, _ in blocks]
    assert len(names) == len(set(names)), f"two blocks share a name: {names}"
    return blocks


def steps(code: str) -> list[tuple[str, str]]:
    """(curl command, the `#` lines under it, joined) of each curl command of a block."""
    found, command, answer = [], None, None
    for line in code.splitlines() + [""]:
        if line.startswith("#"):
            if command is not None:
                answer = (answer or "") + line[1:].strip()
            continue
        if command is not None and answer is None and line.startswith(" "):
            command += "\n" + line  # the command goes on
            continue
        if command is not None:
            assert answer is not None, f"no `# answer` line under {command.splitlines()[0]!r}"
            found.append((command, answer))
            command, answer = None, None
        if line.startswith("curl "):
            command = line
    return found


# --- the answers' pattern -------------------------------------------------------------------

MORE = object()  # `...`: any value; an entry of an object: further keys; ending a list: more items
TOKEN = re.compile(r'\s*(\.\.\.|"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|true|false|null|[{}\[\]:,])')


def parse_pattern(text: str):
    """The README's JSON with `...` in it (see the module's doc)."""
    tokens, position = [], 0
    while text[position:].strip():
        match = TOKEN.match(text, position)
        assert match, f"not JSON with `...` at {text[position:]!r}"
        tokens.append(match.group(1))
        position = match.end()
    position = 0

    def take() -> str:
        nonlocal position
        position += 1
        return tokens[position - 1]

    def value():
        token = take()
        if token == "...":
            return MORE
        if token == "{":
            pattern = {}
            while (token := take()) != "}":
                if token == ",":
                    continue
                if token == "...":
                    pattern[MORE] = True
                    continue
                assert take() == ":", text
                pattern[json.loads(token)] = value()
            return pattern
        if token == "[":
            items = []
            while (token := tokens[position]) != "]":
                if token == ",":
                    take()
                    continue
                items.append(value())
            take()
            return items
        return json.loads(token)

    result = value()
    assert position == len(tokens), f"trailing text in {text}"
    return result


def mismatch(pattern, actual, where: str = "answer", shape_only: bool = False) -> str | None:
    """Where `actual` differs from the README's `pattern`, or None."""
    if pattern is MORE:
        return None
    if isinstance(pattern, dict):
        if not isinstance(actual, dict):
            return f"{where}: {actual!r} is not an object"
        keys = {k for k in pattern if k is not MORE}
        if not keys <= set(actual):
            return f"{where}: keys {sorted(keys - set(actual))} missing"
        if MORE not in pattern and set(actual) != keys:
            return f"{where}: keys {sorted(set(actual) - keys)} not in the README"
        for key in keys:
            if key == "id" and isinstance(pattern[key], int) and type(actual[key]) is int:
                continue  # a row's id: any integer
            if problem := mismatch(pattern[key], actual[key], f"{where}.{key}", shape_only):
                return problem
        return None
    if isinstance(pattern, list):
        if not isinstance(actual, list):
            return f"{where}: {actual!r} is not a list"
        more = bool(pattern) and pattern[-1] is MORE
        items = pattern[:-1] if more else pattern
        if len(actual) < len(items) or (not more and len(actual) != len(items)):
            return f"{where}: {len(actual)} items, the README shows {len(items)}{' or more' if more else ''}"
        for index, item in enumerate(actual):
            same_shape = index >= len(items)
            expected = items[-1] if same_shape else items[index]
            if items and (problem := mismatch(expected, item, f"{where}[{index}]", shape_only or same_shape)):
                return problem
        return None
    if type(pattern) is not type(actual) and not (isinstance(pattern, float) and type(actual) is int):
        return f"{where}: {actual!r} is not like the README's {pattern!r}"
    if shape_only:
        return None
    if isinstance(pattern, str):
        for form in (STREAM_ID, TIME):
            if form.fullmatch(pattern):
                return None if form.fullmatch(actual) else f"{where}: {actual!r} is not of the form {pattern!r}"
        if "..." in pattern:
            regex = ".*".join(re.escape(part) for part in pattern.split("..."))
            return None if re.fullmatch(regex, actual, re.S) else f"{where}: {actual!r} does not match {pattern!r}"
    return None if pattern == actual else f"{where}: {actual!r}, the README says {pattern!r}"


def expected_answer(comment: str) -> tuple[int, object]:
    status, _, body = comment.partition(" ")
    if status.isdigit():
        return int(status), parse_pattern(body)
    return 200, parse_pattern(comment)


# --- the walk ------------------------------------------------------------------------------

@pytest.fixture
def stack(base_settings, empty_tables, tmp_path, request):
    empty_tables()
    stack = Stack({"REDIS_URL": base_settings.redis_url, "DATABASE_URL": base_settings.database_url,
                   "KEY_PREFIX": f"{base_settings.key_prefix}{request.node.name}:", "DRAIN_INTERVAL": "0.5",
                   "AUTH_ENABLED": "true"}, tmp_path)
    request.addfinalizer(stack.stop)
    stack.front = stack.start_all()
    return stack


def bash(script: str, cwd, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def drained(stack: Stack) -> bool:
    """Nothing accepted is waiting: every entry is stored and acknowledged."""
    settings = load_settings(stack.env)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        return pipeline_stats(client, settings.stream, settings.consumer_group)["oldest_unstored_age_seconds"] is None
    finally:
        client.close()


@pytest.mark.e2e
def test_the_readme_examples_answer_what_the_readme_shows(stack, tmp_path):
    blocks = walked_blocks()
    # A scratch checkout: the demo keys where `make run` writes them (the same module).
    checkout = tmp_path / "checkout"
    made = subprocess.run([sys.executable, "-m", "collector.devtools.demo_keys", "--file",
                           str(checkout / "var" / "demo-keys.env")], cwd=ROOT, env=stack.env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    # The README's own line loads them (it runs again, verbatim, in its block).
    [export] = {line for _, code in blocks for line in code.splitlines() if line.startswith("export ")}
    loaded = bash(f"{export}\nenv -0", checkout, {"PATH": os.environ["PATH"]})
    assert loaded.returncode == 0, loaded.stderr
    keys = dict(item.split("=", 1) for item in loaded.stdout.split("\0") if item.startswith("COLLECTOR_"))
    assert sorted(keys) == sorted(KEY_VARIABLES)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **keys}

    for name, code in blocks:
        assert README_URL in code, f"{name}: not addressed to {README_URL}"
        commands = steps(code)
        assert commands, f"{name}: no curl command with its answer"
        if not any(re.search(r"\s(-d|--data\S*)\s", command) for command, _ in commands):
            wait_until(lambda: drained(stack), 60, f"the drain, before {name} reads back")
        done = bash("set -u\n" + CURL_WITH_STATUS + code.replace(README_URL, stack.front), checkout, env)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        parts = re.split(rf"\n{re.escape(STATUS_MARK)}(\d+)\n", done.stdout)
        answers = list(zip(parts[1::2], parts[0::2], strict=False))
        assert len(answers) == len(commands), f"{name}: {len(answers)} answers for {len(commands)} commands"
        for (command, comment), (status, body) in zip(commands, answers, strict=True):
            want_status, pattern = expected_answer(comment)
            assert int(status) == want_status, f"{name}: {command}\nanswered {status} {body}"
            assert body.strip(), f"{name}: {command}\nanswered {status} with no body"
            problem = mismatch(pattern, json.loads(body))
            assert problem is None, f"{name}: {command}\n{problem}\nanswered {status} {body}"


# --- the walk's own parts, without a stack --------------------------------------------------

def test_the_matcher_takes_variable_parts_and_refuses_fixed_ones():
    pattern = parse_pattern('{"status":"queued","count":2,"message_ids":["1795896963524-0", ...],'
                            '"received_at":"2026-11-28T20:16:03.520942+00:00","note":"Must be one of: ...",'
                            '"data":[{"id":1,"level":"INFO"}, ...],"more":{"a":1,...}}')
    answer = {"status": "queued", "count": 2, "message_ids": ["1-0", "17-3"], "received_at": "2026-12-01T05:17:24Z",
              "note": "Must be one of: DEBUG, INFO.", "data": [{"id": 9, "level": "INFO"}, {"id": 8, "level": "ERROR"}],
              "more": {"a": 1, "b": 2}}
    assert mismatch(pattern, answer) is None
    for change, problem in [({"count": 3}, "answer.count: 3"), ({"status": "rejected"}, "answer.status"),
                            ({"message_ids": ["abc"]}, "not of the form"), ({"received_at": "now"}, "not of the form"),
                            ({"note": "Must be two"}, "does not match"), ({"data": []}, "0 items"),
                            ({"data": [{"id": 1, "level": "WARN"}]}, "answer.data[0].level"),
                            ({"data": [{"id": 1, "level": "INFO"}, {"id": 2}]}, "answer.data[1]: keys ['level']"),
                            ({"more": {"b": 2}}, "answer.more: keys ['a'] missing"), ({"count": True}, "answer.count")]:
        found = mismatch(pattern, {**answer, **change})
        assert found is not None and problem in found, (change, found)
    assert "not in the README" in mismatch(parse_pattern('{"a":1}'), {"a": 1, "b": 2})
    assert expected_answer('422 {"error":"validation_failed"}') == (422, {"error": "validation_failed"})


def test_a_curl_block_without_a_marker_or_an_answer_fails_the_walk():
    marked = "<!-- tested: one -->\n```bash\ncurl -s http://127.0.0.1:18723/livez\n# {\"status\":\"up\"}\n```\n"
    readme = ("## Quick start\n\n" + marked + "## API\n\n```bash\ncurl -s http://127.0.0.1:18723/x\n```\n"
              "## Finding and watching logs\n\n## Keys\n")
    with pytest.raises(AssertionError, match="without a <!-- tested"):
        walked_blocks(readme)
    both = walked_blocks(readme.replace("## API\n\n", "## API\n\n<!-- tested: two -->\n"))
    [(first, code), (second, unanswered)] = both
    assert (first, second) == ("one", "two")
    assert steps(code) == [("curl -s http://127.0.0.1:18723/livez", '{"status":"up"}')]
    with pytest.raises(AssertionError, match="no `# answer` line"):
        steps(unanswered)
    with pytest.raises(AssertionError, match="share a name"):
        walked_blocks(readme.replace("## API\n\n", "## API\n\n<!-- tested: one -->\n"))
