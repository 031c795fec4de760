//! The attempt budget under parallel guesses (issue 8, item 2; INTERFACE.md
//! section 5): however many codes arrive at once, at most
//! `security.max_attempts` are compared before a lockout; a code that arrives
//! while locked is refused (429) without being compared, even the right one;
//! the consecutive-failure cap in the database stays exact. Every route, with
//! Redis and with the in-process store (`memory://`), and every burst really
//! in flight at once (one HTTP/2 connection, see `support::burst`).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::app::AppConfig;
use crate::support::burst::{self, metric, statuses, Req};
use crate::support::http::Response;
use crate::support::keycloak::{now, Token};
use crate::user_common::UserStack;
use crate::user_totp::{oathtool, parse_uri};

pub const MAX_ATTEMPTS: usize = 5;
const BURST: usize = 60;
/// Long enough that the lockout outlasts both bursts.
const LOCKOUT_SECS: u64 = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Redis,
    Memory,
}

#[derive(Clone, Copy, Debug)]
enum Route {
    Otp,
    Totp,
    Recovery,
}

/// A `/user` stack on the given short-lived store.
pub async fn stack(store: Store, tweak: impl FnOnce(&mut AppConfig)) -> UserStack {
    UserStack::start(move |c| {
        if store == Store::Memory {
            c.set_str("storage", "redis_url", "memory://");
        }
        tweak(c);
    })
    .await
}

/// A user with no contact verified by us (so that no rule stands between
/// them and enrolling TOTP), known to the Keycloak admin stand-in.
pub async fn factorless_user(u: &UserStack, name: &str) -> Token {
    let t = u
        .stack
        .keycloak
        .token()
        .user(name)
        .claim("email_verified", json!(false))
        .build();
    u.kc_admin
        .add_user(t.sub(), name, &format!("{name}@example.com"), json!({}));
    u.create_profile(&t).await;
    t
}

/// Enrolls TOTP for `t`; returns the otpauth parameters, the unix time of
/// the code that confirmed it and the recovery codes.
pub async fn enroll_totp(
    u: &UserStack,
    t: &Token,
) -> (crate::user_totp::UriParams, i64, Vec<String>) {
    let r = u.call("POST", "/user/generate-totp", t, Value::Null).await;
    u.expect(&r, 201, "generate-totp");
    let params = parse_uri(r.json()["otpauth_uri"].as_str().unwrap());
    let at = now();
    let r = u
        .call(
            "POST",
            "/user/verify-totp",
            t,
            json!({ "totp": oathtool(&params, at), "is_new_seed": true }),
        )
        .await;
    u.expect(&r, 200, "confirm TOTP");
    let codes = r.json()["recovery_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    (params, at, codes)
}

/// What a guesser sends: the route, the body of a wrong code and of the
/// right one (pending, never used), and the metrics label.
struct Target {
    guesser: Token,
    path: &'static str,
    method: &'static str,
    wrong: Value,
    right: Value,
}

async fn target(u: &UserStack, route: Route) -> Target {
    match route {
        Route::Otp => {
            let alice = u.alice();
            u.create_profile(&alice).await;
            let guesser = u.other_session(&alice);
            let code = u
                .login_code_by_email(&guesser, "alice@example.com", 1)
                .await
                .code();
            let wrong = if code == "000000" { "111111" } else { "000000" };
            let body = |c: &str| json!({ "otp": c, "otp_type": "email", "purpose": "login" });
            Target {
                guesser,
                path: "/user/verify-otp",
                method: "email",
                wrong: body(wrong),
                right: body(&code),
            }
        }
        Route::Totp => {
            let bob = factorless_user(u, "bob").await;
            let (params, at, _) = enroll_totp(u, &bob).await;
            // The next step: the confirming one is spent (replay guard).
            let right = oathtool(&params, at + params.period as i64);
            let wrong = if right == "000000" {
                "111111"
            } else {
                "000000"
            };
            let body = |c: &str| json!({ "totp": c, "is_new_seed": false });
            Target {
                guesser: u.other_session(&bob),
                path: "/user/verify-totp",
                method: "totp",
                wrong: body(wrong),
                right: body(&right),
            }
        }
        Route::Recovery => {
            let carol = factorless_user(u, "carol").await;
            let (_, _, codes) = enroll_totp(u, &carol).await;
            // Well formed, from the code alphabet, and not one of hers.
            let wrong = "2345-6789-ABCD-EFGH-JKMN";
            assert!(!codes.iter().any(|c| c == wrong));
            Target {
                guesser: u.other_session(&carol),
                path: "/user/verify-recovery-code",
                method: "recovery",
                wrong: json!({ "code": wrong }),
                right: json!({ "code": codes[0] }),
            }
        }
    }
}

fn verifications(m: &str, method: &str, result: &str) -> f64 {
    metric(
        m,
        &format!("twofa_verifications_total{{method=\"{method}\",result=\"{result}\"}}"),
    )
}

/// The database's consecutive-failure count of `sub`.
pub async fn db_failures(u: &UserStack, sub: &str) -> i64 {
    let url = u
        .stack
        .config
        .get("storage", "database_url")
        .unwrap()
        .trim_matches('"')
        .to_owned();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    let task = tokio::spawn(conn);
    let row = client
        .query_opt("SELECT count FROM factor_failure WHERE sub = $1", &[&sub])
        .await
        .expect("SELECT factor_failure");
    task.abort();
    row.map_or(0, |r| i64::from(r.get::<_, i32>(0)))
}

fn explain(u: &UserStack, what: &str, answers: &[Response]) -> String {
    let bodies: Vec<String> = answers.iter().take(8).map(|r| r.text()).collect();
    format!(
        "{what}: statuses {:?}, first bodies {bodies:?}\n--- log ---\n{}",
        statuses(answers),
        u.stack
            .app
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

async fn parallel_guesses_are_bounded(store: Store, route: Route) {
    let u = stack(store, |c| {
        c.set("security", "max_attempts", MAX_ATTEMPTS.to_string())
            .set_str("security", "lockout", &format!("{LOCKOUT_SECS}s"));
    })
    .await;
    let t = target(&u, route).await;
    let addr = u.addr().to_owned();
    let wrong = Req::new("POST", t.path)
        .bearer(&t.guesser.jwt)
        .json(&t.wrong);

    // 60 wrong codes at once: exactly `max_attempts` compared. The first
    // four answer 400 with what is left, the fifth spends the budget and
    // answers 429 (the lockout starts with it), the rest are refused unseen.
    let m0 = u.metrics().await;
    let answers = burst::h2(&addr, &vec![wrong.clone(); BURST]).await;
    let m1 = u.metrics().await;
    let what = format!("{route:?} on {store:?}, burst of wrong codes");
    assert_eq!(
        statuses(&answers),
        vec![(400, MAX_ATTEMPTS - 1), (429, BURST - MAX_ATTEMPTS + 1)],
        "{}",
        explain(&u, &what, &answers)
    );
    let mut left: Vec<i64> = answers
        .iter()
        .filter(|a| a.status == 400)
        .map(|a| {
            assert_eq!(a.json()["code"], "invalid_code");
            a.json()["attempts_remaining"].as_i64().unwrap()
        })
        .collect();
    left.sort_unstable();
    assert_eq!(left, vec![1, 2, 3, 4], "{what}");
    for a in answers.iter().filter(|a| a.status == 429) {
        assert_eq!(a.json()["code"], "too_many_attempts", "{what}");
        let retry: u64 = a.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=LOCKOUT_SECS).contains(&retry), "{what}: {retry}");
    }
    let delta = |r: &str| verifications(&m1, t.method, r) - verifications(&m0, t.method, r);
    assert_eq!(delta("invalid"), (MAX_ATTEMPTS - 1) as f64, "{what}\n{m1}");
    assert_eq!(
        delta("locked_out"),
        1.0,
        "{what}: the fifth spent the budget"
    );
    assert_eq!(
        delta("refused"),
        (BURST - MAX_ATTEMPTS) as f64,
        "{what}: the rest were not compared"
    );
    assert_eq!(
        metric(&m1, "twofa_lockouts_total") - metric(&m0, "twofa_lockouts_total"),
        1.0
    );
    // Only compared wrong codes count towards the consecutive cap.
    assert_eq!(
        db_failures(&u, t.guesser.sub()).await,
        MAX_ATTEMPTS as i64,
        "{what}"
    );

    // While locked: a burst with the right code in the middle. Nothing is
    // compared; the right code is refused like the others.
    let mut locked: Vec<Req> = vec![wrong; BURST];
    locked[BURST / 2] = Req::new("POST", t.path)
        .bearer(&t.guesser.jwt)
        .json(&t.right);
    let answers = burst::h2(&addr, &locked).await;
    let m2 = u.metrics().await;
    let what = format!("{route:?} on {store:?}, burst while locked");
    assert_eq!(
        statuses(&answers),
        vec![(429, BURST)],
        "{}",
        explain(&u, &what, &answers)
    );
    assert_eq!(
        verifications(&m2, t.method, "success"),
        verifications(&m0, t.method, "success"),
        "{what}"
    );
    assert_eq!(
        verifications(&m2, t.method, "refused") - verifications(&m1, t.method, "refused"),
        BURST as f64,
        "{what}"
    );
    let profile = u.profile(&t.guesser).await;
    assert_eq!(profile["session"]["second_factor"], Value::Null, "{what}");
    if let Route::Recovery = route {
        assert_eq!(profile["recovery_codes_remaining"], 10, "nothing spent");
    }

    // The code refused in the burst was right, and it is still usable once
    // the lockout ends: the refusal was the budget's, not the code's.
    let wait = answers
        .iter()
        .filter_map(|a| a.header("retry-after")?.parse::<u64>().ok())
        .max()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(wait * 1000 + 200)).await;
    let r = u.call("POST", t.path, &t.guesser, t.right.clone()).await;
    u.expect(
        &r,
        200,
        &format!("{route:?} on {store:?}: right code after the lockout"),
    );
    assert_eq!(
        db_failures(&u, t.guesser.sub()).await,
        0,
        "a success resets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_otp_codes_redis() {
    parallel_guesses_are_bounded(Store::Redis, Route::Otp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_otp_codes_memory() {
    parallel_guesses_are_bounded(Store::Memory, Route::Otp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_totp_codes_redis() {
    parallel_guesses_are_bounded(Store::Redis, Route::Totp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_totp_codes_memory() {
    parallel_guesses_are_bounded(Store::Memory, Route::Totp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_recovery_codes_redis() {
    parallel_guesses_are_bounded(Store::Redis, Route::Recovery).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_recovery_codes_memory() {
    parallel_guesses_are_bounded(Store::Memory, Route::Recovery).await;
}

/// The right code as the last attempt of the budget is accepted, and clears
/// the counter, the lockout it would have started, and the series.
async fn right_code_within_the_budget_clears_it(store: Store) {
    let u = stack(store, |c| {
        c.set("security", "max_attempts", MAX_ATTEMPTS.to_string())
            .set_str("security", "lockout", "2s");
    })
    .await;
    let alice = u.alice();
    u.create_profile(&alice).await;
    let guesser = u.other_session(&alice);
    let code = u
        .login_code_by_email(&guesser, "alice@example.com", 1)
        .await
        .code();
    let wrong = if code == "000000" { "111111" } else { "000000" };

    // A first lockout (level 1 of a series).
    for _ in 1..MAX_ATTEMPTS {
        u.expect_problem(
            &u.verify(&guesser, "email", wrong, Some("login")).await,
            400,
            "invalid_code",
            "wrong",
        );
    }
    let r = u.verify(&guesser, "email", wrong, Some("login")).await;
    u.expect_problem(&r, 429, "too_many_attempts", "spends the budget");
    assert_eq!(crate::user_common::retry_after(&r), 2);
    tokio::time::sleep(Duration::from_millis(2200)).await;

    // Four wrong, then the right code as the fifth attempt.
    for n in (1..MAX_ATTEMPTS).rev() {
        let r = u.verify(&guesser, "email", wrong, Some("login")).await;
        u.expect_problem(&r, 400, "invalid_code", "wrong");
        assert_eq!(r.json()["attempts_remaining"], n as u64);
    }
    let r = u.verify(&guesser, "email", &code, Some("login")).await;
    u.expect(&r, 200, "the right code as the last attempt");
    assert_eq!(
        u.profile(&guesser).await["session"]["second_factor"],
        "email"
    );

    // The budget is whole again (no lockout), and the series starts over:
    // the next lockout is the first one's length, not twice it.
    let other = u.other_session(&alice);
    u.login_code_by_email(&other, "alice@example.com", 2).await;
    let r = u.verify(&other, "email", wrong, Some("login")).await;
    u.expect_problem(&r, 400, "invalid_code", "after the success");
    assert_eq!(r.json()["attempts_remaining"], (MAX_ATTEMPTS - 1) as u64);
    for _ in 2..MAX_ATTEMPTS {
        let r = u.verify(&other, "email", wrong, Some("login")).await;
        u.expect_problem(&r, 400, "invalid_code", "wrong");
    }
    let r = u.verify(&other, "email", wrong, Some("login")).await;
    u.expect_problem(&r, 429, "too_many_attempts", "a new first lockout");
    assert_eq!(
        crate::user_common::retry_after(&r),
        2,
        "the series was cleared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_code_within_the_budget_clears_it_redis() {
    right_code_within_the_budget_clears_it(Store::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn right_code_within_the_budget_clears_it_memory() {
    right_code_within_the_budget_clears_it(Store::Memory).await;
}

/// `security.max_consecutive_failures` under a parallel burst, with a timed
/// budget too large to matter: exactly the cap is counted, exactly one
/// request reaches it, and the rest answer 423.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_cap_is_exact_under_a_parallel_burst() {
    const CAP: usize = 7;
    let u = stack(Store::Redis, |c| {
        c.set("security", "max_attempts", "100").set(
            "security",
            "max_consecutive_failures",
            CAP.to_string(),
        );
    })
    .await;
    let t = target(&u, Route::Otp).await;
    let wrong = Req::new("POST", t.path)
        .bearer(&t.guesser.jwt)
        .json(&t.wrong);
    let m0 = u.metrics().await;
    let answers = burst::h2(u.addr(), &vec![wrong; BURST]).await;
    let m1 = u.metrics().await;
    assert_eq!(
        statuses(&answers),
        vec![(400, CAP - 1), (423, BURST - CAP + 1)],
        "{}",
        explain(&u, "burst against the cap", &answers)
    );
    assert!(answers
        .iter()
        .filter(|a| a.status == 423)
        .all(|a| a.json()["code"] == "factor_locked"));
    assert_eq!(db_failures(&u, t.guesser.sub()).await, CAP as i64);
    assert_eq!(
        metric(&m1, "twofa_lockouts_total") - metric(&m0, "twofa_lockouts_total"),
        1.0,
        "the cap is reached once"
    );
    assert_eq!(
        verifications(&m1, "email", "invalid") - verifications(&m0, "email", "invalid"),
        (CAP - 1) as f64
    );
    // Locked until reset-user, even for the right code.
    let r = u.call("POST", t.path, &t.guesser, t.right.clone()).await;
    u.expect_problem(&r, 423, "factor_locked", "right code at the cap");
}
