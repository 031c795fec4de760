// A minimal single-page app calling the twofa-authz /user API directly from
// another origin (docs/spa.md). No framework, no dependencies.
//
// Serve this directory on its own origin, e.g.
//   python3 -m http.server 8000 --bind 127.0.0.1
// and list that origin in twofa-authz's `server.cors_allowed_origins`
// (dev mode: TWOFA_SERVER__CORS_ALLOWED_ORIGINS=http://127.0.0.1:8000).
"use strict";

const CONFIG = {
  api: "http://127.0.0.1:8090",           // twofa-authz's HTTP listener
  keycloak: "http://localhost:8080",      // Keycloak base URL
  realm: "demo",
  clientId: "spa-example",                // a public client with PKCE (S256)
  redirectUri: window.location.origin + window.location.pathname,
};

// The token lives in memory only: a reload signs in again (Keycloak's own
// session makes that a redirect without a password prompt).
let accessToken = null;

const $ = (id) => document.getElementById(id);
const say = (text) => { $("status").textContent = text; };

// --- Sign in: authorization code flow with PKCE (RFC 7636) ----------------

function b64url(bytes) {
  return btoa(String.fromCharCode(...new Uint8Array(bytes)))
    .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomString() {
  return b64url(crypto.getRandomValues(new Uint8Array(32)));
}

function oidc(path) {
  return `${CONFIG.keycloak}/realms/${encodeURIComponent(CONFIG.realm)}/protocol/openid-connect/${path}`;
}

async function signIn() {
  const verifier = randomString();
  const state = randomString();
  const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  // Only for the round trip through Keycloak; removed on return.
  sessionStorage.setItem("pkce", JSON.stringify({ verifier, state }));
  const q = new URLSearchParams({
    response_type: "code",
    client_id: CONFIG.clientId,
    redirect_uri: CONFIG.redirectUri,
    scope: "openid",
    state,
    code_challenge: challenge,
    code_challenge_method: "S256",
  });
  window.location.assign(`${oidc("auth")}?${q}`);
}

async function finishSignIn() {
  const q = new URLSearchParams(window.location.search);
  const saved = JSON.parse(sessionStorage.getItem("pkce") || "null");
  sessionStorage.removeItem("pkce");
  if (!q.has("code") || !saved) return false;
  history.replaceState(null, "", CONFIG.redirectUri);
  if (q.get("state") !== saved.state) { say("Sign-in failed: state mismatch."); return false; }
  const r = await fetch(oidc("token"), {
    method: "POST",
    headers: { "Content-Type": "application/x-www-form-urlencoded" },
    body: new URLSearchParams({
      grant_type: "authorization_code",
      code: q.get("code"),
      redirect_uri: CONFIG.redirectUri,
      client_id: CONFIG.clientId,
      code_verifier: saved.verifier,
    }),
  });
  if (!r.ok) { say(`Sign-in failed: token endpoint answered ${r.status}.`); return false; }
  accessToken = (await r.json()).access_token;
  return true;
}

// Dev mode only (`twofa-authz serve --dev`): a token from the built-in issuer.
async function devSignIn() {
  const r = await fetch(`${CONFIG.api}/dev/token`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sub: "alice", username: "alice", email: "alice@example.com" }),
  });
  if (!r.ok) { say(`/dev/token answered ${r.status}: is the server in dev mode?`); return; }
  accessToken = (await r.json()).access_token;
  await showProfile();
}

// --- Calling /user ----------------------------------------------------------

class Problem extends Error {
  constructor(status, body, retryAfter) {
    super(body.detail || body.title || `HTTP ${status}`);
    this.status = status;
    this.code = body.code;
    this.body = body;
    this.retryAfter = retryAfter;
  }
}

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${accessToken}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(CONFIG.api + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    // Bearer tokens, not cookies: never send credentials cross-origin.
    credentials: "omit",
  });
  if (r.status === 204) return null;
  const json = await r.json().catch(() => ({}));
  if (!r.ok) {
    // Retry-After is readable here because twofa-authz exposes it.
    const retry = Number(r.headers.get("Retry-After")) || json.retry_after || null;
    throw new Problem(r.status, json, retry);
  }
  return json;
}

// Branch on `code`, never on the English `detail`.
function explain(p) {
  switch (p.code) {
    case "missing_token":
    case "invalid_token": return "Your sign-in has expired. Sign in again.";
    case "profile_not_found": return "No profile yet.";
    case "invalid_code": return `Wrong code. ${p.body.attempts_remaining} attempts left.`;
    case "too_many_attempts":
    case "resend_too_soon": return `Too many tries. Wait ${p.retryAfter} s.`;
    case "factor_locked": return "Your second factor is locked. Contact the administrator.";
    case "second_factor_required": return "Pass a second factor first (or again: this change needs a recent one).";
    case "no_pending_totp":
    case "totp_not_enabled": return "TOTP is not set up for this account.";
    default: return `Error ${p.status} ${p.code || ""}: ${p.message}`;
  }
}

async function showProfile() {
  try {
    let profile;
    try {
      profile = await api("GET", "/user");
    } catch (e) {
      if (!(e instanceof Problem) || e.code !== "profile_not_found") throw e;
      profile = await api("POST", "/user");   // first visit: register
    }
    $("profile-json").textContent = JSON.stringify(profile, null, 2);
    $("profile").hidden = false;
    $("verify").hidden = !profile.totp_enabled;
    say(profile.session.second_factor ? `Verified with ${profile.session.second_factor}.` : "Not verified in this session.");
  } catch (e) {
    say(e instanceof Problem ? explain(e) : `Network error: ${e.message}`);
  }
}

async function verifyTotp(event) {
  event.preventDefault();
  try {
    await api("POST", "/user/verify-totp", { totp: $("totp").value.trim(), is_new_seed: false });
    $("totp").value = "";
    await showProfile();
  } catch (e) {
    say(e instanceof Problem ? explain(e) : `Network error: ${e.message}`);
  }
}

$("signin").addEventListener("click", () => { signIn().catch((e) => say(e.message)); });
$("devsignin").addEventListener("click", () => { devSignIn().catch((e) => say(e.message)); });
$("totp-form").addEventListener("submit", verifyTotp);
finishSignIn().then((ok) => { if (ok) showProfile(); }).catch((e) => say(e.message));
