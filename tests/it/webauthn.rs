//! WebAuthn passkeys (`/user/webauthn/...`) with an authenticator nobody here
//! wrote: Chromium's virtual authenticator (WebDriver's WebAuthn extension,
//! CTAP2, internal transport, discoverable credentials, user verification),
//! on the real binary with real Redis. The ceremonies run in the page
//! `/ui/` at `http://localhost:<port>` (a secure context, `rp_id =
//! localhost`): the page's own conversion code (`window.twofaWebauthn`) turns
//! the start routes' options into `navigator.credentials` calls and the
//! results into the finish routes' bodies.
//!
//! Covered: registration and authentication, the Check before (403, methods
//! hint with `webauthn`) and after (allow, `x-auth-request-second-factor:
//! webauthn`), the stored counter and backup flags, the recent-factor rule
//! on adding and removing, and refusals, each counted: a replayed
//! assertion, an assertion for another session's challenge, an expired
//! ceremony, a cloned authenticator (the stored counter ahead of the
//! authenticator's), a wrong origin, a wrong rp id. And the `/ui/` page's
//! own buttons in dev mode: adding a passkey, then passing the factor with
//! it in a new session, offered before the other factors.

use serde_json::{json, Value};

use crate::support::app::toml_strings;
use crate::support::browser::Browser;
use crate::support::burst::{self, metric, statuses, Req};
use crate::support::http::{self, Response};
use crate::support::keycloak::{uuid, Token};
use crate::support::ports::free_port;
use crate::support::{Delivery, Stack};

/// One ceremony in the page: start, the browser's `create`/`get`, finish.
/// Arguments: kind (`register` | `authenticate`), token, name.
const CEREMONY_JS: &str = r#"
const [kind, token, name, done] = arguments;
(async () => {
  const W = window.twofaWebauthn;
  const call = async (path, body) => {
    const r = await fetch('/user/webauthn/' + path, {
      method: 'POST',
      headers: { Authorization: 'Bearer ' + token, 'Content-Type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let j = null;
    try { j = await r.json(); } catch (e) { j = null; }
    return { status: r.status, body: j };
  };
  const t0 = performance.now();
  const start = await call(kind + '/start');
  if (start.status !== 200) return { start: start };
  let credential;
  if (kind === 'register') {
    credential = W.createdJson(await navigator.credentials.create(W.creationOptions(start.body)));
  } else {
    credential = W.assertedJson(await navigator.credentials.get(W.requestOptions(start.body)));
  }
  const body = kind === 'register' ? { credential: credential, name: name } : { credential: credential };
  const finish = await call(kind + '/finish', body);
  return { start: start, finish: finish, body: body, ms: performance.now() - t0 };
})().then(done, (e) => done({ error: String(e) }));
"#;

/// Only the browser's part, on options the test got itself: `create` or
/// `get`, with `rp_id` replacing the options' relying party when given.
const BROWSER_JS: &str = r#"
const [kind, options, rpId, done] = arguments;
(async () => {
  const W = window.twofaWebauthn;
  if (kind === 'create') {
    const o = W.creationOptions(options);
    if (rpId) o.publicKey.rp = Object.assign({}, o.publicKey.rp, { id: rpId });
    return W.createdJson(await navigator.credentials.create(o));
  }
  const o = W.requestOptions(options);
  if (rpId) o.publicKey.rpId = rpId;
  return W.assertedJson(await navigator.credentials.get(o));
})().then(done, (e) => done({ error: String(e) }));
"#;

struct Rp {
    stack: Stack,
    browser: Browser,
    authenticator: String,
    /// Where the change notices go.
    delivery: Delivery,
}

impl Rp {
    /// A stack whose HTTP listener is `localhost:<port>`, relying party
    /// `localhost` with `origins` (default: the page's own origin), and a
    /// browser with a virtual authenticator on `/ui/`.
    async fn start(test: &str, port: u16, origins: Option<Vec<String>>) -> Rp {
        let origin = format!("http://localhost:{port}");
        let origins = origins.unwrap_or_else(|| vec![origin.clone()]);
        let delivery = Delivery::start().await;
        let stack = Stack::start_with(None, |c| {
            delivery.configure(c);
            c.set_str("server", "http_addr", &format!("127.0.0.1:{port}"))
                .set_str("webauthn", "rp_id", "localhost")
                // The stand-in's tokens carry a verified email: without
                // `email` here, a new user has no factor at all.
                .set(
                    "security",
                    "methods",
                    toml_strings(&["webauthn", "totp", "recovery"]),
                )
                .set(
                    "webauthn",
                    "rp_origins",
                    toml_strings(&origins.iter().map(String::as_str).collect::<Vec<_>>()),
                );
        })
        .await;
        let browser = Browser::start(test, "en").await;
        let authenticator = browser.add_virtual_authenticator().await;
        browser.goto(&format!("{origin}/ui/")).await;
        Rp {
            stack,
            browser,
            authenticator,
            delivery,
        }
    }

    fn addr(&self) -> &str {
        self.stack.app.http_addr()
    }

    async fn call(&self, method: &str, path: &str, t: &Token, body: Value) -> Response {
        let mut r = http::request(method, self.addr(), path)
            .bearer(&t.jwt)
            .header("Content-Type", "application/json");
        if !body.is_null() {
            r = r.body(body.to_string());
        }
        r.send().await
    }

    async fn ceremony(&self, kind: &str, t: &Token, name: &str) -> Value {
        let v = self
            .browser
            .client
            .execute_async(CEREMONY_JS, vec![json!(kind), json!(t.jwt), json!(name)])
            .await
            .unwrap_or_else(|e| panic!("{kind} ceremony: {e}\n{}", self.stack.app.log()));
        assert!(v.get("error").is_none(), "{kind} in the browser: {v}");
        v
    }

    /// The browser's `create`/`get` on `options`; Err(message) when the
    /// browser refuses.
    async fn browser_op(&self, kind: &str, options: &Value, rp_id: Option<&str>) -> Value {
        let v = self
            .browser
            .client
            .execute_async(BROWSER_JS, vec![json!(kind), options.clone(), json!(rp_id)])
            .await
            .unwrap_or_else(|e| panic!("browser {kind}: {e}"));
        assert!(v.get("error").is_none(), "{kind} in the browser: {v}");
        v
    }

    /// `POST /user/webauthn/authenticate/start` in `t`'s session, which
    /// must answer 200 (`what` says which start failed).
    async fn start_authentication(&self, t: &Token, what: &str) -> Value {
        let r = self
            .call("POST", "/user/webauthn/authenticate/start", t, Value::Null)
            .await;
        expect(&r, 200, None, what);
        r.json()
    }

    /// A ceremony started in `t`'s session and the browser's assertion for
    /// it, not yet posted.
    async fn assertion(&self, t: &Token, what: &str) -> Value {
        let options = self.start_authentication(t, what).await;
        self.browser_op("get", &options, None).await
    }

    async fn metrics(&self) -> String {
        http::get(self.addr(), "/metrics").send().await.text()
    }

    async fn failures(&self, ceremony: &str, reason: &str) -> f64 {
        metric(
            &self.metrics().await,
            &format!(
                "twofa_webauthn_failures_total{{ceremony=\"{ceremony}\",reason=\"{reason}\"}}"
            ),
        )
    }

    async fn verifications(&self, result: &str) -> f64 {
        metric(
            &self.metrics().await,
            &format!("twofa_verifications_total{{method=\"webauthn\",result=\"{result}\"}}"),
        )
    }

    async fn check(&self, t: &Token) -> Response {
        self.stack
            .authz("GET", "/app/x")
            .bearer(&t.jwt)
            .send()
            .await
    }

    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.stack.app.dir().join("twofa.db"))
            .expect("open the database")
    }

    /// A profile for `user`, and a token of it in a new session.
    async fn user(&self, user: &str) -> Token {
        let t = self.session(user);
        let r = self.call("POST", "/user", &t, Value::Null).await;
        assert_eq!(r.status, 201, "create profile: {}", r.text());
        t
    }

    fn session(&self, user: &str) -> Token {
        self.stack.keycloak.token().user(user).sid(&uuid()).build()
    }

    /// Registers a passkey (no other factor: none needed) and passes one
    /// assertion with it in `t`'s session.
    async fn enrolled(&self, t: &Token) -> Value {
        let reg = self.ceremony("register", t, "key").await;
        assert_eq!(
            reg["finish"]["status"],
            201,
            "{reg}\n{}",
            self.stack.app.log()
        );
        let auth = self.ceremony("authenticate", t, "").await;
        assert_eq!(
            auth["finish"]["status"],
            200,
            "{auth}\n{}",
            self.stack.app.log()
        );
        auth
    }
}

fn expect(r: &Response, status: u16, code: Option<&str>, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    if let Some(code) = code {
        assert_eq!(r.json()["code"], code, "{what}: {}", r.text());
        assert_eq!(
            r.header("content-type"),
            Some("application/problem+json"),
            "{what}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_registers_authenticates_and_passes_the_check() {
    let rp = Rp::start("webauthn_flow", free_port(), None).await;
    let alice = rp.user("wa-alice").await;

    // Before: the Check refuses, and suggests nothing (no factor yet).
    let r = rp.check(&alice).await;
    expect(&r, 403, Some("second_factor_required"), "check before");

    // Registration: the user has no factor yet, so none is asked for.
    let reg = rp.ceremony("register", &alice, "Laptop").await;
    assert_eq!(
        reg["finish"]["status"],
        201,
        "{reg}\n{}",
        rp.stack.app.log()
    );
    assert_eq!(reg["finish"]["body"]["name"], "Laptop", "{reg}");
    // The owner hears of it, at the verified address the profile took
    // from the token.
    let mail = rp.delivery.smtp.wait_for("wa-alice@example.com", 1).await;
    assert!(
        mail.subject.contains("A passkey was added"),
        "{}",
        mail.subject
    );
    let cred_id = reg["finish"]["body"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_eq!(
        reg["body"]["credential"]["id"], cred_id,
        "the id is the credential's"
    );
    let options = &reg["start"]["body"]["publicKey"];
    assert_eq!(options["rp"]["id"], "localhost", "{options}");
    assert_eq!(options["attestation"], "none", "{options}");
    assert_eq!(
        options["authenticatorSelection"]["userVerification"], "preferred",
        "{options}"
    );
    let reg_ms = reg["ms"].as_f64().unwrap_or_default();

    let profile = rp.call("GET", "/user", &alice, Value::Null).await.json();
    assert_eq!(profile["methods"][0], "webauthn", "{profile}");
    assert_eq!(
        profile["session"]["second_factor"],
        Value::Null,
        "{profile}"
    );
    let list = rp
        .call("GET", "/user/webauthn/credentials", &alice, Value::Null)
        .await;
    expect(&list, 200, None, "list");
    let list = list.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"], cred_id);
    assert_eq!(list[0]["name"], "Laptop");
    assert_eq!(list[0]["last_used_at"], Value::Null);
    assert!(list[0]["backup_eligible"].is_boolean() && list[0]["backup_state"].is_boolean());

    // Registering verifies nothing; the 403 now lists the passkey.
    let r = rp.check(&alice).await;
    expect(
        &r,
        403,
        Some("second_factor_required"),
        "check after registering",
    );
    assert_eq!(r.json()["methods"], json!(["webauthn"]), "{}", r.text());

    // Authentication: the session becomes verified with `webauthn`.
    let auth = rp.ceremony("authenticate", &alice, "").await;
    assert_eq!(
        auth["finish"]["status"],
        200,
        "{auth}\n{}",
        rp.stack.app.log()
    );
    assert_eq!(auth["finish"]["body"], json!({"verified": true}));
    let allow_list = &auth["start"]["body"]["publicKey"]["allowCredentials"];
    assert_eq!(allow_list[0]["id"], cred_id, "{allow_list}");
    let auth_ms = auth["ms"].as_f64().unwrap_or_default();
    eprintln!("webauthn ceremony round trips (start, browser, finish): register {reg_ms:.0} ms, authenticate {auth_ms:.0} ms");

    let r = rp.check(&alice).await;
    assert_eq!(r.status, 200, "check after authenticating: {}", r.text());
    assert_eq!(r.header("x-auth-request-second-factor"), Some("webauthn"));
    let profile = rp.call("GET", "/user", &alice, Value::Null).await.json();
    assert_eq!(profile["session"]["second_factor"], "webauthn", "{profile}");
    assert_eq!(rp.verifications("success").await, 1.0);

    // The authenticator's counter is what is stored, with the last use.
    let held = rp.browser.virtual_credentials(&rp.authenticator).await;
    assert_eq!(held.len(), 1, "{held:?}");
    let sign_count = held[0]["signCount"].as_i64().expect("signCount");
    let (stored, passkey): (i64, String) = rp
        .db()
        .query_row(
            "SELECT sign_count, passkey FROM webauthn_credential WHERE id = ?1",
            [&cred_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("stored credential");
    assert_eq!(stored, sign_count, "stored counter");
    let passkey: Value = serde_json::from_str(&passkey).unwrap();
    assert_eq!(passkey["cred"]["counter"], sign_count, "{passkey}");
    let list = rp
        .call("GET", "/user/webauthn/credentials", &alice, Value::Null)
        .await
        .json();
    assert!(list[0]["last_used_at"].as_i64().is_some(), "{list}");

    // Adding and removing need a recent factor: another session of Alice's
    // that passed none is refused, with `max_age`.
    let other = rp.session("wa-alice");
    let r = rp
        .call("POST", "/user/webauthn/register/start", &other, Value::Null)
        .await;
    expect(
        &r,
        403,
        Some("second_factor_required"),
        "add from an unverified session",
    );
    assert_eq!(r.json()["max_age"], 600, "{}", r.text());
    assert_eq!(r.json()["methods"], json!(["webauthn"]), "{}", r.text());
    let path = format!("/user/webauthn/credentials/{cred_id}");
    let r = rp.call("DELETE", &path, &other, Value::Null).await;
    expect(
        &r,
        403,
        Some("second_factor_required"),
        "remove from an unverified session",
    );
    let r = rp
        .call(
            "DELETE",
            "/user/webauthn/credentials/nope",
            &alice,
            Value::Null,
        )
        .await;
    expect(
        &r,
        404,
        Some("webauthn_credential_not_found"),
        "remove an unknown one",
    );
    let r = rp.call("DELETE", &path, &alice, Value::Null).await;
    expect(&r, 204, None, "remove from the verified session");
    let mail = rp.delivery.smtp.wait_for("wa-alice@example.com", 2).await;
    assert!(
        mail.subject.contains("A passkey was removed"),
        "{}",
        mail.subject
    );
    // The refused removals above told nobody anything.
    assert_eq!(
        rp.delivery.smtp.messages_to("wa-alice@example.com").len(),
        2
    );
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/start",
            &alice,
            Value::Null,
        )
        .await;
    expect(&r, 404, Some("webauthn_not_enabled"), "no credential left");
    // The audit trail (docs/audit.md): registered, passed, removed, once each.
    let log = rp.stack.app.log();
    for (event, extra) in [
        ("webauthn_registered", ""),
        ("factor_passed", "\"method\":\"webauthn\""),
        ("webauthn_removed", ""),
    ] {
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(&format!("\"event\":\"{event}\"")) && l.contains(extra))
            .collect();
        assert_eq!(lines.len(), 1, "{event}: {lines:#?}");
    }

    // Malformed responses are problems, never 500s.
    let r = rp
        .call(
            "POST",
            "/user/webauthn/register/finish",
            &alice,
            json!({"credential": {"id": 1}}),
        )
        .await;
    expect(&r, 422, Some("invalid_request"), "a malformed credential");
    let r = http::request("POST", rp.addr(), "/user/webauthn/authenticate/finish")
        .bearer(&alice.jwt)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await;
    expect(&r, 400, Some("invalid_json"), "not JSON");
    rp.browser.shot("done").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_foreign_expired_and_cloned_assertions_are_refused_and_counted() {
    let rp = Rp::start("webauthn_refusals", free_port(), None).await;
    let alice = rp.user("wa-refused").await;
    let first = rp.enrolled(&alice).await;

    // A replay: the same finish body again. Its ceremony is spent.
    let replayed = first["body"].clone();
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/finish",
            &alice,
            replayed.clone(),
        )
        .await;
    expect(&r, 404, Some("no_pending_ceremony"), "replay");
    assert_eq!(rp.failures("authenticate", "no_ceremony").await, 1.0);
    // The same replay while a new ceremony waits: the challenge differs,
    // and the refusal counts against the attempt budget.
    rp.start_authentication(&alice, "start").await;
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/finish",
            &alice,
            replayed,
        )
        .await;
    expect(
        &r,
        400,
        Some("invalid_code"),
        "replay against a new challenge",
    );
    assert_eq!(r.json()["attempts_remaining"], 4, "{}", r.text());
    assert_eq!(rp.failures("authenticate", "challenge").await, 1.0);

    // Another session's challenge: started in session A, answered in B.
    let b = rp.session("wa-refused");
    let assertion_a = rp.assertion(&alice, "start in A").await;
    let body_a = json!({ "credential": assertion_a });
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/finish",
            &b,
            body_a.clone(),
        )
        .await;
    expect(
        &r,
        404,
        Some("no_pending_ceremony"),
        "A's assertion in B, B started nothing",
    );
    rp.start_authentication(&b, "start in B").await;
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/finish",
            &b,
            body_a.clone(),
        )
        .await;
    expect(
        &r,
        400,
        Some("invalid_code"),
        "A's assertion for B's challenge",
    );
    assert_eq!(r.json()["attempts_remaining"], 3, "{}", r.text());
    assert_eq!(rp.failures("authenticate", "challenge").await, 2.0);
    let check_b = rp.check(&b).await;
    expect(
        &check_b,
        403,
        Some("second_factor_required"),
        "B stays unverified",
    );
    // A's ceremony was untouched by B's attempts: A's answer still passes
    // (and the success clears the budget).
    let r = rp
        .call("POST", "/user/webauthn/authenticate/finish", &alice, body_a)
        .await;
    expect(&r, 200, None, "A's assertion in A");

    // An expired ceremony: its stored deadline has passed (the key's TTL,
    // 5 minutes, is what the store enforces by itself).
    let assertion = rp.assertion(&alice, "start").await;
    let mut conn = rp.stack.redis.connection().await;
    let key = rp
        .stack
        .redis
        .keys()
        .await
        .into_iter()
        .find(|k| k.contains("wa:{") && k.contains(":auth:"))
        .expect("the ceremony's key");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((1..=300).contains(&ttl), "ceremony TTL {ttl}");
    let raw: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut stored: Value = serde_json::from_str(&raw).unwrap();
    let exp = stored["exp"].as_i64().expect("exp");
    assert!(exp - crate::support::keycloak::now() <= 300, "{exp}");
    stored["exp"] = json!(crate::support::keycloak::now() - 1);
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(stored.to_string())
        .arg("KEEPTTL")
        .query_async(&mut conn)
        .await
        .unwrap();
    let r = rp
        .call(
            "POST",
            "/user/webauthn/authenticate/finish",
            &alice,
            json!({ "credential": assertion }),
        )
        .await;
    expect(&r, 404, Some("no_pending_ceremony"), "expired");
    assert_eq!(rp.failures("authenticate", "expired").await, 1.0);

    // A cloned authenticator: the stored counter is ahead of the one this
    // authenticator signs, as after a copy of the key was used elsewhere.
    rp.db()
        .execute(
            "UPDATE webauthn_credential SET sign_count = 1000000, \
             passkey = json_set(passkey, '$.cred.counter', 1000000)",
            [],
        )
        .expect("raise the stored counter");
    let auth = rp.ceremony("authenticate", &alice, "").await;
    assert_eq!(auth["finish"]["status"], 400, "{auth}");
    assert_eq!(auth["finish"]["body"]["code"], "invalid_code", "{auth}");
    assert_eq!(auth["finish"]["body"]["attempts_remaining"], 4, "{auth}");
    assert_eq!(rp.failures("authenticate", "counter").await, 1.0);

    // Every compared refusal is a wrong attempt; the others did not compare.
    assert_eq!(rp.verifications("invalid").await, 3.0);
    assert_eq!(rp.verifications("no_pending").await, 3.0);
    assert_eq!(rp.verifications("success").await, 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_origin_or_rp_id_is_refused_and_counted() {
    // The page's origin is not among the relying party's origins.
    let rp = Rp::start(
        "webauthn_origin",
        free_port(),
        Some(vec!["http://localhost:9".to_string()]),
    )
    .await;
    let t = rp.user("wa-origin").await;
    let reg = rp.ceremony("register", &t, "key").await;
    assert_eq!(reg["finish"]["status"], 400, "{reg}");
    assert_eq!(reg["finish"]["body"]["code"], "invalid_credential", "{reg}");
    assert_eq!(rp.failures("register", "origin").await, 1.0);
    let list = rp
        .call("GET", "/user/webauthn/credentials", &t, Value::Null)
        .await
        .json();
    assert_eq!(list, json!([]), "nothing registered");
    drop(rp);

    // A page on `sub.localhost` (allowed as an origin) makes the credential
    // for the relying party `sub.localhost`, not `localhost`.
    let port = free_port();
    let sub_origin = format!("http://sub.localhost:{port}");
    let rp = Rp::start(
        "webauthn_rp_id",
        port,
        Some(vec![format!("http://localhost:{port}"), sub_origin.clone()]),
    )
    .await;
    rp.browser.goto(&format!("{sub_origin}/ui/")).await;
    let t = rp.user("wa-rpid").await;
    let start = rp
        .call("POST", "/user/webauthn/register/start", &t, Value::Null)
        .await;
    expect(&start, 200, None, "start");
    let created = rp
        .browser_op("create", &start.json(), Some("sub.localhost"))
        .await;
    let r = rp
        .call(
            "POST",
            "/user/webauthn/register/finish",
            &t,
            json!({ "credential": created }),
        )
        .await;
    expect(&r, 400, Some("invalid_credential"), "wrong rp id");
    assert_eq!(rp.failures("register", "rp_id").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_page_adds_a_passkey_and_offers_it_first() {
    let port = free_port();
    let config =
        format!("[webauthn]\nrp_id = \"localhost\"\nrp_origins = [\"http://localhost:{port}\"]\n");
    let dev = crate::ui::Dev::start_on(&format!("127.0.0.1:{port}"), &config, &[]).await;
    let b = Browser::start("webauthn_ui", "en").await;
    let authenticator = b.add_virtual_authenticator().await;
    let base = format!("http://localhost:{port}/ui/");
    b.goto(&base).await;
    crate::ui::dev_sign_in(&b, "wa-ui").await;
    // Signed in without an email address: no factor yet, so adding the
    // first one asks for none.
    b.visible("#act-passkey").await;
    b.click("#act-passkey").await;
    b.text_contains("#status", "Passkey added").await;
    b.text_contains("#acc-factors", "Passkey").await;
    assert_eq!(
        b.virtual_credentials(&authenticator).await.len(),
        1,
        "{}",
        dev.log()
    );
    b.shot("passkey-added").await;

    // A new session: the passkey is offered first, and passes.
    b.client.refresh().await.unwrap();
    crate::ui::dev_sign_in(&b, "wa-ui").await;
    b.visible("#v-webauthn").await;
    let first_visible = r#"return [...document.querySelectorAll('#verify > div, #verify > form')]
        .filter((e) => !e.hidden).map((e) => e.id);"#;
    let offered = b.client.execute(first_visible, vec![]).await.unwrap();
    assert_eq!(offered[0], "v-webauthn", "{offered}");
    b.shot("passkey-offered-first").await;
    b.click("#v-webauthn-go").await;
    b.text_contains("#status", "Second factor confirmed").await;
    b.text_contains("#acc-session", "Passkey").await;
    b.shot("passkey-passed").await;
}

/// Refused assertions spend the one attempt budget of every factor: with
/// `security.max_attempts = 2` the second one locks the user out, and then
/// a recovery code is refused unchecked too, and so is a new ceremony.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_assertions_spend_the_budget_shared_with_codes() {
    crate::support::with_settings(&[("security", "max_attempts", "2")], async {
        let rp = Rp::start("webauthn_budget", free_port(), None).await;
        let t = rp.user("wa-budget").await;
        let first = rp.enrolled(&t).await;
        let old = &first["body"];
        let r = wrong_assertion(&rp, &t, old).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["attempts_remaining"], 1, "{}", r.text());
        let r = wrong_assertion(&rp, &t, old).await;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["code"], "too_many_attempts", "{}", r.text());
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
        let r = rp
            .call(
                "POST",
                "/user/verify-recovery-code",
                &t,
                json!({"code": "AAAA-BBBB-CCCC-DDDD"}),
            )
            .await;
        expect(
            &r,
            429,
            Some("too_many_attempts"),
            "a code while locked out",
        );
        let r = rp
            .call("POST", "/user/webauthn/authenticate/start", &t, Value::Null)
            .await;
        expect(
            &r,
            429,
            Some("too_many_attempts"),
            "a ceremony while locked out",
        );
        assert_eq!(rp.verifications("invalid").await, 1.0);
        assert_eq!(rp.verifications("locked_out").await, 1.0);
        let m = rp.metrics().await;
        assert_eq!(metric(&m, "twofa_lockouts_total"), 1.0, "{m}");
    })
    .await;
}

/// A new ceremony answered with an old assertion: compared, and wrong.
async fn wrong_assertion(rp: &Rp, t: &Token, old: &Value) -> Response {
    rp.start_authentication(t, "start").await;
    rp.call("POST", "/user/webauthn/authenticate/finish", t, old.clone())
        .await
}

/// `webauthn.user_verification = "required"`: the options ask for it (and
/// for credProtect), and the virtual authenticator, which verifies its user,
/// passes both ceremonies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_user_verification_is_asked_for_and_met() {
    crate::support::with_settings(
        &[("webauthn", "user_verification", "\"required\"")],
        async {
            let rp = Rp::start("webauthn_uv_required", free_port(), None).await;
            let t = rp.user("wa-uv").await;
            let reg = rp.ceremony("register", &t, "key").await;
            assert_eq!(
                reg["finish"]["status"],
                201,
                "{reg}\n{}",
                rp.stack.app.log()
            );
            let options = &reg["start"]["body"]["publicKey"];
            assert_eq!(
                options["authenticatorSelection"]["userVerification"], "required",
                "{options}"
            );
            assert_eq!(
                options["extensions"]["credentialProtectionPolicy"], "userVerificationRequired",
                "{options}"
            );
            let auth = rp.ceremony("authenticate", &t, "").await;
            assert_eq!(auth["finish"]["status"], 200, "{auth}");
            assert_eq!(
                auth["start"]["body"]["publicKey"]["userVerification"], "required",
                "{auth}"
            );
            let r = rp.check(&t).await;
            assert_eq!(r.header("x-auth-request-second-factor"), Some("webauthn"));
        },
    )
    .await;
}

/// One assertion posted 16 times at once on one HTTP/2 connection, written
/// before any answer is read: the ceremony is taken once (get, then
/// delete-if-equal) and the stored counter moves by compare-and-set, so
/// exactly one verifies; the others find no ceremony.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_assertion_posted_many_times_at_once_verifies_once() {
    let rp = Rp::start("webauthn_burst", free_port(), None).await;
    let alice = rp.user("wa-burst").await;
    rp.enrolled(&alice).await;
    let assertion = rp.assertion(&alice, "start").await;
    let body = json!({ "credential": assertion });
    let reqs: Vec<Req> = (0..16)
        .map(|_| {
            Req::new("POST", "/user/webauthn/authenticate/finish")
                .bearer(&alice.jwt)
                .json(&body)
        })
        .collect();
    let answers = burst::h2(rp.addr(), &reqs).await;
    let by_status = statuses(&answers);
    assert_eq!(
        answers.iter().filter(|r| r.status == 200).count(),
        1,
        "{by_status:?}"
    );
    for r in answers.iter().filter(|r| r.status != 200) {
        expect(r, 404, Some("no_pending_ceremony"), "a parallel copy");
    }
}
