"""The demo page and dev mode: the page's files are served with their content types, ship in
the wheel, load nothing from another origin and parse as ES modules (node); dev mode's token
endpoint exists only under `rendezvous serve --dev` with no key configured, mints tokens that
join for real, and refuses bad names. The page's behaviour in a browser is tested by the
Chromium suite against the DOM contract; here it is the server side and the files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import jwt
import pytest

from rendezvous.api.demo import DEV_TOKEN_TTL_SECONDS, WEB_DIRECTORY, slug
from rendezvous.protocol import CloseCode, ErrorCode
from tests.support.client import joined
from tests.support.process import Served, cli_env, require_program, serving
from tests.support.server import running_server
from tests.support.tokens import TEST_SECRET

ROOT = Path(__file__).resolve().parents[2]
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
PAGE_FILES = sorted(p for p in WEB_DIRECTORY.iterdir() if p.is_file())
SCRIPTS = [p for p in PAGE_FILES if p.suffix == ".js"]
# The DOM contract's ids (the Chromium tests find the page by them).
CONTRACT_IDS = (
    "room", "name", "join", "leave", "token", "status", "error", "participants", "peers",
    "local-video", "chat-input", "chat-send", "chat-log",
)  # fmt: skip
NODE_TIMEOUT_SECONDS = 30
WHEEL_TIMEOUT_SECONDS = 180


# the page and its files


def test_the_page_is_a_set_of_plain_files() -> None:
    """index.html, a stylesheet and ES modules, nothing else (no build output, no bundle)."""
    names = {p.name for p in PAGE_FILES}
    assert {"index.html", "app.js", "signaling.js", "mesh.js", "style.css"} <= names
    assert {p.suffix for p in PAGE_FILES} == set(MEDIA_TYPES)
    html = (WEB_DIRECTORY / "index.html").read_text()
    for element_id in CONTRACT_IDS:
        assert f'id="{element_id}"' in html, element_id


async def test_root_redirects_to_the_page_and_every_file_is_served_with_its_type() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.http) as http:
        root = await http.get("/")
        assert root.status_code == 307 and root.headers["location"] == "demo/"
        bare = await http.get("/demo")
        assert bare.status_code == 307 and bare.headers["location"] == "demo/"

        page = await http.get("/", follow_redirects=True)
        assert str(page.url) == f"{server.http}/demo/"
        assert page.status_code == 200
        assert page.headers["content-type"] == MEDIA_TYPES[".html"]
        assert page.text == (WEB_DIRECTORY / "index.html").read_text()
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]

        for path in PAGE_FILES:
            response = await http.get(f"/demo/{path.name}")
            assert response.status_code == 200, path.name
            assert response.headers["content-type"] == MEDIA_TYPES[path.suffix], path.name
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.content == path.read_bytes(), path.name


async def test_only_the_page_files_are_served() -> None:
    """Nothing beside them, and no path from the request reaches the disk."""
    async with running_server() as server, httpx.AsyncClient(base_url=server.http) as http:
        for path in (
            "/demo/missing.js",
            "/demo/..%2Fapi%2Fdemo.py",
            "/demo/%2E%2E%2F__init__.py",
            "/demo/web",
            "/demo/.hidden",
        ):
            assert (await http.get(path)).status_code == 404, path


def test_every_file_the_page_loads_is_one_it_ships() -> None:
    """Each `src`/`href` of index.html and each module import names a file in web/, so the
    page never 404s on a missing module after a rename."""
    shipped = {p.name for p in PAGE_FILES}
    html = (WEB_DIRECTORY / "index.html").read_text()
    loaded = set(re.findall(r'(?:src|href)="([^":]+)"', html))
    for script in SCRIPTS:
        loaded |= set(re.findall(r'from\s+"\./([^"]+)"', script.read_text()))
    assert loaded, "the page loads nothing?"
    assert loaded <= shipped, sorted(loaded - shipped)
    assert {"app.js", "style.css", "signaling.js", "mesh.js"} <= loaded


@pytest.mark.parametrize("path", PAGE_FILES, ids=lambda p: p.name)
def test_no_file_references_another_origin(path: Path) -> None:
    """No CDN, no web font, no absolute URL: the page works offline, from this service only
    (its API calls are relative to the page, so a path prefix behind a proxy works too)."""
    text = path.read_text()
    absolute = re.findall(r"\b(?:https?|wss?|ftp):/{2}[^\s\"'`)]*", text)
    assert absolute == [], absolute
    # Protocol-relative (//cdn.example/x.js) in an attribute, an import or a CSS url().
    relative = re.findall(r"""(?:src=|href=|from\s|import\s|url\()\s*["']?//""", text)
    assert relative == [], relative
    assert "@import" not in text


def test_the_wheel_ships_the_page(tmp_path: Path) -> None:
    """`pip wheel` over a clean copy of the sources (no earlier build, no egg-info, whose
    file lists would hide a missing package-data entry) puts every file of web/ in it."""
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    package = ROOT / "service" / "rendezvous"
    shutil.copytree(package, source / "service" / "rendezvous", ignore=_build_leftovers)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir",
         "--disable-pip-version-check", "--wheel-dir", str(tmp_path / "wheels"), str(source)],
        capture_output=True, text=True, timeout=WHEEL_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("rendezvous-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("rendezvous/web/")}
    assert shipped == {f"rendezvous/web/{p.name}" for p in PAGE_FILES}


def _build_leftovers(directory: str, names: list[str]) -> set[str]:
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".egg-info"))}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_each_script_parses_as_an_es_module(script: Path) -> None:
    """`node --check` with the source on stdin as a module: given a *file*, Node 20 may
    take it for CommonJS and pass a broken module; the broken control below shows this
    check fails."""
    result = _node_check(script.read_text())
    assert result.returncode == 0, result.stderr


def test_the_syntax_check_catches_a_broken_module() -> None:
    broken = 'import { x } from "./signaling.js";\nexport const y = ;\n'
    result = _node_check(broken)
    assert result.returncode != 0
    assert "SyntaxError" in result.stderr


def _node_check(source: str) -> subprocess.CompletedProcess[str]:
    node = require_program("node", package="nodejs")
    return subprocess.run(
        [node, "--input-type=module", "--check"],
        input=source,
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )


# signaling.js's resume helper, scenario by scenario against a scripted WebSocket

RESUME_SCENARIOS_JS = Path(__file__).with_name("js") / "resume_helper.mjs"
RESUME_SCENARIOS = re.findall(r"^  async (\w+)\(\) \{$", RESUME_SCENARIOS_JS.read_text(), re.M)


def test_the_resume_scenarios_are_found() -> None:
    """The parametrisation below reads the scenario names from the script: an empty list
    would pass vacuously."""
    assert len(RESUME_SCENARIOS) >= 7, RESUME_SCENARIOS


@pytest.mark.parametrize("scenario", RESUME_SCENARIOS)
def test_the_resume_helper_follows_the_client_contract(scenario: str) -> None:
    """ResumingSignaling (README "Resuming a session") run by Node against a WebSocket the
    scenario scripts: which closes resume, the resume URL, seq dedupe, the outbox,
    `resume_failed` falling back to a fresh join, the grace window (the script asserts)."""
    node = require_program("node", package="nodejs")
    web = WEB_DIRECTORY.as_uri() + "/"
    result = subprocess.run(
        [node, str(RESUME_SCENARIOS_JS), scenario, web],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_SECONDS,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1:] == [f"ok {scenario}"], result.stdout


# messages.js: a sentence for every code the service can send

MESSAGES_JS = WEB_DIRECTORY / "messages.js"
# Close codes the service causes beyond its CloseCode enum: 1006 (no close frame: the
# connection dropped, or the handshake was refused, e.g. HTTP 503 while draining) and 1007
# (invalid UTF-8, closed by the WebSocket layer; DESIGN.md section 3).
TRANSPORT_CLOSE_CODES = (1006, 1007)


def object_keys(source: str, name: str) -> list[str]:
    """The keys of `const NAME = { ... };` in `source`, in order, duplicates kept: one key
    per line at the object's two-space indent (`key:`, `"key":` or `1006:`); the values'
    continuation lines are indented deeper, so they never match."""
    body = re.search(rf"^const {name} = \{{\n(.*?)^\}};$", source, re.MULTILINE | re.DOTALL)
    assert body is not None, f"no `const {name} = {{...}};` in messages.js"
    keys = re.findall(r'^  (?:"([^"]+)"|([A-Za-z_]\w*|\d+)):', body.group(1), re.MULTILINE)
    return [quoted or bare for quoted, bare in keys]


def test_messages_js_explains_every_error_code_of_the_protocol() -> None:
    """Adding an ErrorCode without a sentence in ERROR_MESSAGES fails here (the page would
    otherwise show a bare "Error: <code>.")."""
    keys = object_keys(MESSAGES_JS.read_text(), "ERROR_MESSAGES")
    assert len(keys) == len(set(keys)), keys  # a repeated key silently replaces the first
    missing = sorted({code.value for code in ErrorCode} - set(keys))
    assert missing == [], f"messages.js ERROR_MESSAGES lacks {missing}"
    assert "network_error" in keys  # the page's own codes are read too: the whole object


def test_messages_js_explains_every_close_code_the_service_uses() -> None:
    keys = object_keys(MESSAGES_JS.read_text(), "CLOSE_MESSAGES")
    assert len(keys) == len(set(keys)), keys
    used = {int(code) for code in CloseCode} | set(TRANSPORT_CLOSE_CODES)
    missing = sorted(used - {int(key) for key in keys})
    assert missing == [], f"messages.js CLOSE_MESSAGES lacks {missing}"


@pytest.mark.parametrize(
    ("name", "entry", "key"),
    [("ERROR_MESSAGES", r'^  room_full: "[^\n]*\n', "room_full"),
     ("CLOSE_MESSAGES", r"^  4001: [^\n]*\n", "4001")],
)  # fmt: skip
def test_the_key_reader_sees_a_missing_message(name: str, entry: str, key: str) -> None:
    """The reader above, on messages.js with one entry cut out, misses exactly that one:
    it reads the file's keys, not something that always passes."""
    source = MESSAGES_JS.read_text()
    cut = re.sub(entry, "", source, count=1, flags=re.MULTILINE)
    assert cut != source, entry
    assert set(object_keys(source, name)) - set(object_keys(cut, name)) == {key}


# dev mode: off unless `serve --dev` with no key


async def test_dev_endpoints_are_absent_outside_dev_mode() -> None:
    async with running_server() as server, httpx.AsyncClient(base_url=server.http) as http:
        assert (await http.get("/webrtc/dev")).status_code == 404
        assert (await http.post("/webrtc/dev/token", json={"name": "eve"})).status_code == 404
        assert (await http.get("/demo/")).status_code == 200  # the page asks for a token


async def test_dev_flag_with_a_configured_key_warns_and_keeps_dev_mode_off(
    tmp_path: Path,
) -> None:
    env = cli_env(tmp_path, JWT_SECRET_KEY=TEST_SECRET, WEBRTC_STUN_URLS="")
    async with (
        serving("--dev", env=env, log_dir=tmp_path / "serve") as served,
        httpx.AsyncClient(base_url=served.http) as http,
    ):
        assert (await http.get("/webrtc/dev")).status_code == 404
        assert (await http.post("/webrtc/dev/token", json={"name": "eve"})).status_code == 404
        assert (await http.get("/demo/")).status_code == 200
        output = served.output()
    warning = next((line for line in output.splitlines() if "--dev IGNORED" in line), None)
    assert warning is not None, output
    assert '"level":"warning"' in warning.replace(" ", "")
    assert "dev mode is OFF" in warning
    assert "dev token" not in served.stdout() and "/demo/" not in served.stdout()  # no banner
    assert not (tmp_path / "state" / "rendezvous").exists()  # no dev key was made


@pytest.fixture
async def dev_server(tmp_path: Path) -> AsyncIterator[Served]:
    """`rendezvous serve --dev` with no key configured and a private state directory."""
    env = cli_env(tmp_path, WEBRTC_STUN_URLS="")
    async with serving("--dev", env=env, log_dir=tmp_path / "serve") as served:
        yield served


def dev_key(tmp_path: Path) -> str:
    return (tmp_path / "state" / "rendezvous" / "dev-jwt-secret").read_text().strip()


async def test_the_dev_banner_prints_the_demo_url(dev_server: Served) -> None:
    found = re.search(r"demo page:\s*(\S+)", dev_server.stdout())
    assert found is not None, dev_server.stdout()
    assert found.group(1) == f"http://127.0.0.1:{dev_server.port}/demo/"
    async with httpx.AsyncClient() as http:
        page = await http.get(found.group(1))
    assert page.status_code == 200 and 'id="join"' in page.text


async def test_a_dev_token_carries_the_name_and_joins_a_room(
    dev_server: Served, tmp_path: Path
) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http) as http:
        assert (await http.get("/webrtc/dev")).json() == {"dev_mode": True}
        first = await http.post("/webrtc/dev/token", json={"name": "  Alice Smith "})
        second = await http.post("/webrtc/dev/token", json={"name": "Alice Smith"})
        assert first.status_code == second.status_code == 200, first.text
        assert first.headers["cache-control"] == "no-store"
        alice, alice_again = first.json(), second.json()

        assert alice["username"] == "Alice Smith"
        assert re.fullmatch(r"alice-smith-[0-9a-f]{6}", alice["user_id"]), alice
        assert alice_again["user_id"] != alice["user_id"]  # two tabs named Alice: two users
        assert alice["expires_in"] == DEV_TOKEN_TTL_SECONDS
        claims = jwt.decode(alice["token"], dev_key(tmp_path), algorithms=["HS256"])
        assert claims["sub"] == alice["user_id"] and claims["username"] == "Alice Smith"
        assert claims["exp"] - claims["iat"] == DEV_TOKEN_TTL_SECONDS
        assert "rooms" not in claims  # any room, like the banner's dev token

        config = await http.get(
            "/webrtc/config", headers={"Authorization": f"Bearer {alice['token']}"}
        )
        assert config.status_code == 200 and config.json()["iceServers"] == []

    # As the page connects: the token in the bearer subprotocol, none in the URL.
    url = f"ws://127.0.0.1:{dev_server.port}/webrtc/ws/lobby"

    def as_page(token: str) -> list[str]:
        return ["rendezvous.v1", f"bearer.{token}"]

    async with joined(url, subprotocols=as_page(alice["token"])) as (first_tab, state):
        assert state["payload"]["participants"] == [
            {"user_id": alice["user_id"], "username": "Alice Smith"}
        ]
        async with joined(url, subprotocols=as_page(alice_again["token"])) as (_, state):
            assert state["payload"]["participant_count"] == 2
            event = await first_tab.expect("user_joined")
            assert event["payload"] == {
                "user_id": alice_again["user_id"],
                "username": "Alice Smith",
            }


BAD_NAMES: list[tuple[object, str]] = [
    ({"name": ""}, "1 to 64 characters"),
    ({"name": "   "}, "1 to 64 characters"),
    ({"name": "x" * 65}, "1 to 64 characters"),
    ({"name": 42}, "must be a string"),
    ({"nom": "alice"}, "must be a string"),
    (["alice"], "must be a string"),
    ({"name": "ali\u0000ce"}, "control or format characters"),
    ({"name": "ali\u202ece"}, "control or format characters"),  # right-to-left override
    ("not json", "must be JSON"),
]


async def test_a_bad_name_gets_422_with_a_clear_message(dev_server: Served) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http) as http:
        for body, problem in BAD_NAMES:
            if isinstance(body, str):
                response = await http.post("/webrtc/dev/token", content=body)
            else:
                response = await http.post("/webrtc/dev/token", json=body)
            assert response.status_code == 422, (body, response.text)
            assert response.json()["code"] == "invalid_message", body
            assert problem in response.json()["message"], (body, response.text)


async def test_names_at_the_limits_are_accepted(dev_server: Served) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http) as http:
        for name in ("x", "é" * 64, "日本語", "O'Brien & co."):
            response = await http.post("/webrtc/dev/token", json={"name": name})
            assert response.status_code == 200, (name, response.text)
            assert response.json()["username"] == name


async def test_an_oversized_body_is_refused(dev_server: Served) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http) as http:
        response = await http.post("/webrtc/dev/token", content=b'{"name": "' + b"a" * 8000)
    assert response.status_code == 422
    assert "at most" in response.json()["message"]


def test_user_ids_are_slugs_of_the_name() -> None:
    assert slug("Alice Smith") == "alice-smith"
    assert slug("  Ünïcödé -- Nåme!  ") == "unicode-name"
    assert slug("日本語") == "user"  # nothing ASCII left: still a valid id
    assert slug("a" * 64) == "a" * 32
    assert re.fullmatch(r"[a-z0-9-]+", slug("x/../y?z=1#w"))
