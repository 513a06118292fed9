"""Tracing from the `OTEL_*` variables, exported over OTLP/HTTP to a real receiver: SERVER
spans for HTTP and WebSocket routes (no per-frame spans), the instance in the resource,
tokens never in an attribute; and with no variables, nothing installed at all."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Protocol

import httpx
import pytest
from opentelemetry import trace

from rendezvous.app import create_app
from rendezvous.settings import ConfigError
from rendezvous.telemetry.tracing import VARIABLES, read_tracing_config
from tests.support.client import joined
from tests.support.otlp import OtlpReceiver, ReceivedSpan
from tests.support.process import cli_env, one_line_failure, run_cli, serving
from tests.support.server import running_server, test_settings
from tests.support.tokens import TEST_SECRET, token

WS_ROUTE = "/webrtc/ws/{room_id}"
WS_SPAN = f"HTTP {WS_ROUTE}"  # the instrumentation names a WebSocket by its route


class Reachable(Protocol):
    """A server in this process (RunningServer) or a `rendezvous serve` (Served)."""

    @property
    def http(self) -> str: ...

    def ws_url(self, room: str, token: str) -> str: ...


async def exchange(server: Reachable, tok: str) -> None:
    """One HTTP request (the token in the header, and in a query too) and one WebSocket
    connection (the token in its URL), besides probes and a scrape (never traced)."""
    async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
        for probe in ("/healthz", "/readyz", "/metrics"):
            assert (await http.get(probe)).status_code == 200
        response = await http.get(
            f"/webrtc/config?token={tok}", headers={"Authorization": f"Bearer {tok}"}
        )
        assert response.status_code == 200, response.text
    async with joined(server.ws_url("traced", tok)):
        pass


def server_span(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    assert found[0].kind == "SERVER"
    return found[0]


def assert_no_token(spans: list[ReceivedSpan], tok: str) -> None:
    for span in spans:
        text = json.dumps([span.name, span.attributes, span.resource])
        assert tok not in text, span
        assert tok.split(".")[-1] not in text, span  # not even the signature


async def test_http_and_websocket_routes_export_one_server_span_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tok = token("alice")
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with running_server() as server:
            assert server.app.state.tracing.enabled
            await exchange(server, tok)
            instance_id = server.services.backend.instance_id
        # Leaving the server flushed the batch: everything is there now.
        spans = receiver.received()

    config = server_span(spans, "GET /webrtc/config")
    ws = server_span(spans, WS_SPAN)
    # No per-frame receive/send spans, no probe or scrape spans; the join's own spans
    # (tests/telemetry/test_spans.py) are the service's.
    routes = [s.name for s in spans if not s.name.startswith("rendezvous.")]
    assert len(routes) == 2, routes
    assert config.attributes["http.route"] == "/webrtc/config"
    assert config.attributes["http.status_code"] == 200
    assert ws.attributes["http.route"] == WS_ROUTE
    assert config.trace_id != ws.trace_id and not config.parent_span_id
    for span in spans:
        assert span.resource["service.name"] == "rendezvous"
        assert span.resource["service.instance.id"] == instance_id
        assert span.resource["service.version"] == "0.1.0"
    assert "token=[redacted]" in ws.attributes["http.url"]
    assert_no_token(spans, tok)


async def test_each_app_exports_under_its_own_instance_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        async with running_server() as one, running_server() as two:
            ids = {one.services.backend.instance_id, two.services.backend.instance_id}
            assert len(ids) == 2
            for server in (one, two):
                async with httpx.AsyncClient(base_url=server.http, timeout=5) as http:
                    headers = {"Authorization": f"Bearer {token('alice')}"}
                    assert (await http.get("/webrtc/config", headers=headers)).status_code == 200
        spans = await receiver.wait_for(lambda spans: len(spans) >= 2)
    assert {s.resource["service.instance.id"] for s in spans} == ids
    assert trace.get_tracer_provider().__class__.__name__ == "ProxyTracerProvider"  # not global


async def test_sampler_always_off_exports_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
        async with running_server() as server:
            await exchange(server, token("alice"))
        assert receiver.requests == 0
        assert receiver.spans == []


@pytest.mark.parametrize(
    "variables",
    [
        {},
        {"OTEL_SERVICE_NAME": "rendezvous", "OTEL_TRACES_SAMPLER": "always_on"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "none"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
    ],
    ids=["nothing", "no-endpoint", "exporter-none", "sdk-disabled"],
)
async def test_without_an_exporter_nothing_is_installed(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str]
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    async with running_server() as server:
        await exchange(server, token("alice"))
        tracing = server.app.state.tracing
        assert not tracing.enabled
        assert tracing.provider is None
        assert isinstance(tracing.tracer, trace.NoOpTracer)
        assert not getattr(server.app, "_is_instrumented_by_opentelemetry", False)
        middleware = server.app.middleware_stack
        names = []
        while middleware is not None:
            names.append(type(middleware).__name__)
            middleware = getattr(middleware, "app", None)
        assert not any("OpenTelemetry" in n for n in names), names
        assert not [t.name for t in threading.enumerate() if t.name.startswith("OtelBatch")]


def test_without_an_exporter_the_sdk_is_not_even_imported(tmp_path: Path) -> None:
    program = (
        "import sys\n"
        "from rendezvous.app import create_app\n"
        "from rendezvous.settings import load_settings\n"
        f"create_app(load_settings(jwt_secret_key={TEST_SECRET!r}, stun_urls=''))\n"
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.instrumentation', 'opentelemetry.exporter'))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        env=cli_env(tmp_path, OTEL_SERVICE_NAME="rendezvous"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


async def test_serve_exports_as_the_environment_says(tmp_path: Path) -> None:
    """The whole-process path: `rendezvous serve` reads the variables itself, with the
    newer HTTP semantic conventions too (url.query), and flushes on Ctrl-C."""
    tok = token("bob")
    async with OtlpReceiver() as receiver:
        env = cli_env(
            tmp_path,
            JWT_SECRET_KEY=TEST_SECRET,
            WEBRTC_STUN_URLS="",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_SERVICE_NAME="signaling-test",
            OTEL_RESOURCE_ATTRIBUTES="deployment.environment.name=test,service.name=ignored",
            OTEL_SEMCONV_STABILITY_OPT_IN="http/dup",
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="1",
        )
        async with serving(env=env, log_dir=tmp_path / "serve") as served:
            await exchange(served, tok)
        spans = await receiver.wait_for(lambda spans: len(spans) >= 5)
    started = next(
        json.loads(line)
        for line in served.output().splitlines()
        if line.startswith("{") and json.loads(line)["message"] == "rendezvous started"
    )
    assert len(spans) == 5, [s.name for s in spans]  # the routes', the join's three
    server_span(spans, "GET /webrtc/config")
    ws = server_span(spans, WS_SPAN)
    assert ws.attributes["url.query"] == "token=[redacted]"
    for span in spans:
        assert span.resource["service.name"] == "signaling-test"
        assert span.resource["deployment.environment.name"] == "test"
        assert span.resource["service.instance.id"] == started["instance_id"]
    assert_no_token(spans, tok)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_TRACES_EXPORTER", "jaeger"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_TRACES_SAMPLER_ARG", "half"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
    ],
)
@pytest.mark.parametrize("command", [("serve", "--port", "9"), ("check-config",)])
def test_serve_and_check_config_refuse_a_bad_otel_value_in_one_line(
    tmp_path: Path, variable: str, value: str, command: tuple[str, ...]
) -> None:
    variables = {"JWT_SECRET_KEY": TEST_SECRET, "OTEL_TRACES_SAMPLER": "traceidratio"}
    env = cli_env(tmp_path, **{**variables, variable: value})
    result = run_cli(*command, env=env)
    line = one_line_failure(result)
    assert result.returncode == 2
    assert line.startswith(f"rendezvous: invalid configuration: {variable}: "), line


@pytest.mark.parametrize(
    ("environ", "exporters", "protocol"),
    [
        ({}, (), "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, ("otlp",), "http/protobuf"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, ("otlp",), None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}, (), None),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",), None),
        ({"OTEL_TRACES_EXPORTER": "otlp, Console"}, ("otlp", "console"), None),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("otlp",),
            "grpc",
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "bad", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"},
            (),
            "grpc",
        ),
    ],
)
def test_the_variables_decide_the_exporters(
    environ: dict[str, str], exporters: tuple[str, ...], protocol: str | None
) -> None:
    config = read_tracing_config(environ)
    assert config.exporters == exporters
    assert config.enabled == bool(exporters)
    if protocol is not None:
        assert config.protocol == protocol


@pytest.mark.parametrize(
    "environ",
    [
        {"OTEL_TRACES_EXPORTER": "none,otlp"},
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
        {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
    ],
)
def test_bad_values_are_config_errors(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        read_tracing_config(environ)
    assert "\n" not in str(caught.value)


def test_a_grpc_exporter_is_built_for_the_grpc_protocol(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    app = create_app(test_settings())
    tracing = app.state.tracing
    assert tracing.enabled
    assert [type(e).__module__ for e in tracing.exporters] == [
        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
    ]


def test_the_readme_lists_every_otel_variable_read() -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert "**OpenTelemetry.**" in section
    assert [name for name in VARIABLES if f"`{name}`" not in section] == []
    assert "does not read them" not in section


def test_check_config_shows_which_exporters_tracing_uses(tmp_path: Path) -> None:
    quiet = run_cli("check-config", env=cli_env(tmp_path, JWT_SECRET_KEY=TEST_SECRET))
    assert json.loads(quiet.stdout)["effective"]["tracing"] == "off"
    env = cli_env(
        tmp_path, JWT_SECRET_KEY=TEST_SECRET, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9"
    )
    result = run_cli("check-config", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["effective"]["tracing"] == ["otlp"]


@pytest.mark.parametrize(
    ("sampler", "argument", "ratio"),
    [
        ("", "", 1.0),
        ("always_on", "", 1.0),
        ("parentbased_always_off", "", 0.0),
        ("always_off", "", 0.0),
        ("traceidratio", "0.25", 0.25),
        ("parentbased_traceidratio", "0.01", 0.01),
        ("parentbased_traceidratio", "", 1.0),
    ],
)
def test_the_fraction_of_frames_traced_follows_the_sampler(
    sampler: str, argument: str, ratio: float
) -> None:
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}
    if sampler:
        environ["OTEL_TRACES_SAMPLER"] = sampler
    if argument:
        environ["OTEL_TRACES_SAMPLER_ARG"] = argument
    assert read_tracing_config(environ).root_ratio == ratio
