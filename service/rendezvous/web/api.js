// The service's HTTP endpoints the page uses: dev mode, dev tokens, and /webrtc/config.
// Every failure becomes an ApiError carrying a code the page can explain: the server's
// own `code` when its JSON body has one, "network_error" when the request never got an
// answer, else "http_<status>".

/** A failed request: `code` as above, `message` from the server when it sent one. */
export class ApiError extends Error {
  constructor(code, message, status = null) {
    super(message);
    this.name = "ApiError";
    this.code = code;
    this.status = status;
  }
}

async function request(url, init = {}) {
  let response;
  try {
    response = await fetch(url, { cache: "no-store", ...init });
  } catch (error) {
    throw new ApiError("network_error", `could not reach ${url}: ${error.message}`);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null; // an answer without JSON (a proxy's error page): judged by its status
  }
  if (!response.ok) {
    const code = typeof body?.code === "string" ? body.code : `http_${response.status}`;
    const message = typeof body?.message === "string" ? body.message : response.statusText;
    throw new ApiError(code, message, response.status);
  }
  return body;
}

/** Whether the service runs in dev mode (GET webrtc/dev: 200 in dev mode, 404 otherwise). */
export async function fetchDevMode(base) {
  try {
    const body = await request(new URL("webrtc/dev", base));
    return body?.dev_mode === true;
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) return false;
    throw error;
  }
}

/** A dev-mode token for a display name: {token, user_id, username, expires_in}. */
export function mintDevToken(base, name) {
  return request(new URL("webrtc/dev/token", base), {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ name }),
  });
}

/** GET webrtc/config with the token: the service's JSON as it came. */
export function fetchIceConfig(base, token) {
  return request(new URL("webrtc/config", base), {
    headers: { Authorization: `Bearer ${token}` },
  });
}

/**
 * An RTCConfiguration from /webrtc/config's JSON, which repeats every field in
 * snake_case and camelCase; either spelling is read, camelCase first.
 */
export function toRtcConfiguration(json) {
  const pick = (camel, snake) => json?.[camel] ?? json?.[snake];
  const servers = pick("iceServers", "ice_servers") ?? [];
  const configuration = {
    iceServers: servers.map((server) => {
      const entry = { urls: server.urls };
      if (server.username !== undefined) entry.username = server.username;
      if (server.credential !== undefined) entry.credential = server.credential;
      return entry;
    }),
  };
  const policies = {
    iceTransportPolicy: pick("iceTransportPolicy", "ice_transport_policy"),
    bundlePolicy: pick("bundlePolicy", "bundle_policy"),
    rtcpMuxPolicy: pick("rtcpMuxPolicy", "rtcp_mux_policy"),
  };
  for (const [name, value] of Object.entries(policies)) {
    if (typeof value === "string") configuration[name] = value;
  }
  return configuration;
}

/** The `sub` claim of a JWT (read, not verified: the server verifies), or null. */
export function tokenSubject(token) {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const padded = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const bytes = Uint8Array.from(atob(padded), (char) => char.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return typeof claims.sub === "string" ? claims.sub : null;
  } catch {
    return null;
  }
}
