//! The behaviour every store implementation must show, written once and run
//! against each implementation (memory here; Redis, SQLite and PostgreSQL
//! from the integration tests, against real servers; the Redis suites also
//! against TLS, a Cluster and Sentinel, below).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use twofa_authz::store::{
    Attempt, AttemptLimits, DeviceMatch, DeviceRecord, DeviceStore, EphemeralStore, Factor,
    Profile, ProfileStore, ResetReport, SessionIds, SessionStore, TotpRecord, Verified,
    WebAuthnCredential,
};

/// `advance(secs)` must move the store's notion of time forward: a manual
/// clock for the memory store, a real sleep for Redis (whose TTLs are its own).
pub async fn session_store<F, Fut>(store: &dyn SessionStore, now: i64, advance: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let iss = "https://conformance.example/realms/r";
    let a1 = SessionIds::new(iss, "alice", "s1");
    let a2 = SessionIds::new(iss, "alice", "s2");
    let b3 = SessionIds::new(iss, "bob", "s3");
    let ttl = Duration::from_secs(60);
    store.ping().await.expect("ping");
    for ids in [&a1, &a2, &b3] {
        let _ = store.remove(ids).await.expect("clean start");
    }
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        None,
        "fresh store is empty"
    );

    let v = Verified {
        factor: Factor::Totp,
        at: now,
    };
    store.put(&a1, v, ttl).await.expect("put");
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        Some(v)
    );
    assert_eq!(
        store.get(&a2.subject, &a2.session).await.expect("get"),
        None,
        "sessions are independent"
    );
    // Same sid, other subject: a different session (state belongs to the triple).
    let other_sub_same_sid = SessionIds::new(iss, "mallory", "s1");
    assert_eq!(
        store
            .get(&other_sub_same_sid.subject, &other_sub_same_sid.session)
            .await
            .expect("get"),
        None
    );

    // A later verification replaces the earlier one.
    let v2 = Verified {
        factor: Factor::Sms,
        at: now + 5,
    };
    store.put(&a1, v2, ttl).await.expect("put");
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        Some(v2)
    );

    assert!(store.remove(&a1).await.expect("remove"));
    assert!(!store.remove(&a1).await.expect("remove again"));
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        None
    );

    // Removing a subject ends all of its sessions and only those.
    store.put(&a1, v, ttl).await.expect("put");
    store.put(&a2, v, ttl).await.expect("put");
    store.put(&b3, v, ttl).await.expect("put");
    assert_eq!(
        store
            .remove_subject(&a1.subject)
            .await
            .expect("remove_subject"),
        2
    );
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        None
    );
    assert_eq!(
        store.get(&a2.subject, &a2.session).await.expect("get"),
        None
    );
    assert_eq!(
        store.get(&b3.subject, &b3.session).await.expect("get"),
        Some(v)
    );
    assert_eq!(store.remove_subject(&a1.subject).await.expect("again"), 0);

    // Removing by sid (a logout token without sub) ends exactly that session.
    store.put(&a1, v, ttl).await.expect("put");
    assert!(store.remove_sid(&b3.sid).await.expect("remove_sid"));
    assert_eq!(
        store.get(&b3.subject, &b3.session).await.expect("get"),
        None
    );
    assert_eq!(
        store.get(&a1.subject, &a1.session).await.expect("get"),
        Some(v)
    );
    assert!(!store.remove_sid(&b3.sid).await.expect("remove_sid again"));

    // Concurrent lookups each get their own session's answer (the Redis
    // store pipelines them over shared connections).
    let many: Vec<(SessionIds, Verified)> = (0..40)
        .map(|i| {
            let factor = [Factor::Totp, Factor::Email, Factor::Sms, Factor::Recovery][i % 4];
            (
                SessionIds::new(iss, &format!("user-{i}"), "s"),
                Verified {
                    factor,
                    at: now + i as i64,
                },
            )
        })
        .collect();
    for (ids, v) in many.iter().step_by(2) {
        store.put(ids, *v, ttl).await.expect("put");
    }
    let answers = futures::future::join_all(
        many.iter()
            .map(|(ids, _)| store.get(&ids.subject, &ids.session)),
    )
    .await;
    for (i, ((ids, v), got)) in many.iter().zip(answers).enumerate() {
        let expect = if i % 2 == 0 { Some(*v) } else { None };
        assert_eq!(got.expect("concurrent get"), expect, "session {i}");
        store.remove(ids).await.expect("cleanup");
    }

    // Entries expire with their TTL.
    store
        .put(&b3, v, Duration::from_secs(1))
        .await
        .expect("put");
    assert_eq!(
        store.get(&b3.subject, &b3.session).await.expect("get"),
        Some(v)
    );
    advance(2).await;
    assert_eq!(
        store.get(&b3.subject, &b3.session).await.expect("get"),
        None,
        "expired"
    );
    store.remove_subject(&a1.subject).await.expect("cleanup");
}

/// The behaviour of an [`EphemeralStore`]. `advance(secs)` moves the store's
/// time as for [`session_store`]. Keys are namespaced by `ns` so that runs
/// against a shared server do not collide.
pub async fn ephemeral_store<F, Fut>(store: Arc<dyn EphemeralStore>, ns: &str, advance: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let k = |name: &str| format!("conf:{ns}:{name}");
    let min = Duration::from_secs(60);
    store.ping().await.expect("ping");
    assert_eq!(store.get(&k("a")).await.expect("get"), None);
    assert_eq!(store.ttl(&k("a")).await.expect("ttl"), None);

    store.set(&k("a"), "one", min).await.expect("set");
    assert_eq!(
        store.get(&k("a")).await.expect("get").as_deref(),
        Some("one")
    );
    let ttl = store.ttl(&k("a")).await.expect("ttl").expect("has a ttl");
    assert!(ttl <= min && ttl >= Duration::from_secs(58), "ttl {ttl:?}");
    store.set(&k("a"), "two", min).await.expect("overwrite");
    assert_eq!(
        store.get(&k("a")).await.expect("get").as_deref(),
        Some("two")
    );

    // set_nx only sets what is absent.
    assert!(!store.set_nx(&k("a"), "three", min).await.expect("set_nx"));
    assert_eq!(
        store.get(&k("a")).await.expect("get").as_deref(),
        Some("two")
    );
    assert!(store.set_nx(&k("b"), "b", min).await.expect("set_nx"));
    assert_eq!(store.get(&k("b")).await.expect("get").as_deref(), Some("b"));

    assert!(store.delete(&k("b")).await.expect("delete"));
    assert!(!store.delete(&k("b")).await.expect("delete again"));
    assert_eq!(store.get(&k("b")).await.expect("get"), None);

    // delete_if_eq deletes only the expected value.
    assert!(!store.delete_if_eq(&k("a"), "one").await.expect("cas"));
    assert_eq!(
        store.get(&k("a")).await.expect("get").as_deref(),
        Some("two")
    );
    assert!(store.delete_if_eq(&k("a"), "two").await.expect("cas"));
    assert!(!store.delete_if_eq(&k("a"), "two").await.expect("cas again"));
    assert!(!store
        .delete_if_eq(&k("missing"), "x")
        .await
        .expect("cas absent"));

    // N concurrent consumers of one value: exactly one wins.
    store.set(&k("code"), "h", min).await.expect("set");
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            let key = k("code");
            tokio::spawn(async move { s.delete_if_eq(&key, "h").await.expect("cas") })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.expect("join") {
            wins += 1;
        }
    }
    assert_eq!(wins, 1, "one value consumed exactly once");

    // Counters: created with a TTL that later increments do not extend.
    assert_eq!(
        store
            .incr(&k("n"), Duration::from_secs(2))
            .await
            .expect("incr"),
        1
    );
    assert_eq!(store.incr(&k("n"), min).await.expect("incr"), 2);
    let ttl = store
        .ttl(&k("n"))
        .await
        .expect("ttl")
        .expect("counter has a ttl");
    assert!(
        ttl <= Duration::from_secs(2),
        "incr must not extend the ttl: {ttl:?}"
    );
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = store.clone();
            let key = k("n");
            tokio::spawn(async move { s.incr(&key, min).await.expect("incr") })
        })
        .collect();
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await.expect("join"));
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (3..=12).collect::<Vec<u64>>(),
        "increments are atomic"
    );

    // The attempt budget: refused while locked, one atomic step each.
    attempt_budget(store.clone(), ns, &advance).await;

    // Everything expires with its TTL.
    store
        .set(&k("short"), "x", Duration::from_secs(1))
        .await
        .expect("set");
    assert!(store
        .set_nx(&k("short-nx"), "x", Duration::from_secs(1))
        .await
        .expect("set_nx"));
    advance(3).await;
    assert_eq!(store.get(&k("short")).await.expect("get"), None, "expired");
    assert_eq!(store.ttl(&k("short")).await.expect("ttl"), None);
    assert_eq!(
        store.get(&k("n")).await.expect("get"),
        None,
        "counter expired"
    );
    assert!(!store
        .delete_if_eq(&k("short"), "x")
        .await
        .expect("cas expired"));
    assert!(
        store
            .set_nx(&k("short-nx"), "y", min)
            .await
            .expect("set_nx"),
        "an expired key is absent for set_nx"
    );
    assert_eq!(
        store.incr(&k("n"), min).await.expect("incr"),
        1,
        "a new counter"
    );
    for name in ["a", "short-nx", "n", "code"] {
        store.delete(&k(name)).await.expect("cleanup");
    }
}

/// [`EphemeralStore::take_attempt`] and [`EphemeralStore::clear_attempts`]:
/// the limit holds under concurrency, the lockout doubles, a clear starts
/// over. Lockouts here are 1 s (then 2 s), so that Redis runs in real time.
async fn attempt_budget<F, Fut>(store: Arc<dyn EphemeralStore>, ns: &str, advance: &F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let u = format!("budget-{ns}");
    let v = format!("budget-other-{ns}");
    let limits = AttemptLimits {
        max_attempts: 5,
        lockout: Duration::from_secs(1),
    };
    let granted = |n| Attempt::Granted {
        n,
        locked_now: None,
    };
    let _ = store.clear_attempts(&u).await.expect("clean start");
    let _ = store.clear_attempts(&v).await.expect("clean start");
    for n in 1..=4 {
        assert_eq!(
            store.take_attempt(&u, limits).await.expect("take"),
            granted(n)
        );
    }
    assert_eq!(
        store.take_attempt(&u, limits).await.expect("take"),
        Attempt::Granted {
            n: 5,
            locked_now: Some(Duration::from_secs(1)),
        },
        "the last attempt of the budget starts the lockout"
    );
    match store.take_attempt(&u, limits).await.expect("take") {
        Attempt::Locked { left } => assert!(left <= Duration::from_secs(1), "{left:?}"),
        other => panic!("granted while locked: {other:?}"),
    }
    // Every key the budget writes has a TTL (a clear removes them all).
    assert_eq!(
        store.take_attempt(&v, limits).await.expect("other user"),
        granted(1),
        "users are independent"
    );

    // The lockout ends; the series remembers it: the next one is twice as
    // long.
    advance(2).await;
    for n in 1..=4 {
        assert_eq!(
            store.take_attempt(&u, limits).await.expect("take"),
            granted(n),
            "a new budget after the lockout"
        );
    }
    assert_eq!(
        store.take_attempt(&u, limits).await.expect("take"),
        Attempt::Granted {
            n: 5,
            locked_now: Some(Duration::from_secs(2)),
        }
    );
    // A clear (a right code) lifts the lockout and forgets the series.
    assert!(store.clear_attempts(&u).await.expect("clear"));
    assert!(!store.clear_attempts(&u).await.expect("clear again"));
    assert_eq!(
        store.take_attempt(&u, limits).await.expect("take"),
        granted(1)
    );
    assert!(store.clear_attempts(&u).await.expect("clear"));

    // 60 at once: exactly `max_attempts` granted, exactly one of them starts
    // the lockout, the rest refused.
    let tasks: Vec<_> = (0..60)
        .map(|_| {
            let s = store.clone();
            let u = u.clone();
            tokio::spawn(async move { s.take_attempt(&u, limits).await.expect("take") })
        })
        .collect();
    let mut numbers = Vec::new();
    let (mut locking, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("join") {
            Attempt::Granted { n, locked_now } => {
                numbers.push(n);
                locking += usize::from(locked_now.is_some());
            }
            Attempt::Locked { .. } => refused += 1,
        }
    }
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2, 3, 4, 5], "granted under concurrency");
    assert_eq!(locking, 1);
    assert_eq!(refused, 55);
    assert!(store.clear_attempts(&u).await.expect("cleanup"));
    // v's counter lived as long as one lockout (1 s): gone by now.
    assert!(!store.clear_attempts(&v).await.expect("cleanup"));
}

fn profile(subject: &str, now: i64) -> Profile {
    Profile {
        subject: subject.into(),
        username: Some("alice".into()),
        first_name: Some("Alice".into()),
        last_name: Some("Liddell".into()),
        email: Some("alice@example.com".into()),
        email_verified: true,
        mobile: None,
        mobile_verified: false,
        pending_email: None,
        pending_mobile: Some("+14155550123".into()),
        created_at: now,
        updated_at: now,
    }
}

/// The behaviour of a [`ProfileStore`] against a fresh (empty) database.
/// Subjects are namespaced by `ns`.
pub async fn profile_store(store: Arc<dyn ProfileStore>, ns: &str) {
    let now = 1_700_000_000;
    let alice = format!("{ns}-alice");
    let bob = format!("{ns}-bob");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrate is idempotent");
    store.ping().await.expect("ping");

    // Profiles.
    assert_eq!(store.get_profile(&alice).await.expect("get"), None);
    let mut p = profile(&alice, now);
    assert!(store.create_profile(&p).await.expect("create"));
    let mut other = profile(&alice, now + 1);
    other.username = Some("mallory".into());
    assert!(!store.create_profile(&other).await.expect("create twice"));
    assert_eq!(
        store.get_profile(&alice).await.expect("get"),
        Some(p.clone())
    );
    p.mobile = Some("+14155550123".into());
    p.mobile_verified = true;
    p.pending_mobile = None;
    p.email = None;
    p.email_verified = false;
    p.first_name = Some("Ünïcödé 'quoted' \"name\"".into());
    p.updated_at = now + 10;
    assert!(store.update_profile(&p).await.expect("update"));
    assert_eq!(
        store.get_profile(&alice).await.expect("get"),
        Some(p.clone())
    );
    assert!(!store
        .update_profile(&profile(&bob, now))
        .await
        .expect("update absent"));
    assert_eq!(store.get_profile(&bob).await.expect("get"), None);
    assert!(store
        .create_profile(&profile(&bob, now))
        .await
        .expect("create bob"));

    // Concurrent creation of one profile: exactly one wins.
    let carol = format!("{ns}-carol");
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = store.clone();
            let p = profile(&carol, now);
            tokio::spawn(async move { s.create_profile(&p).await.expect("create") })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.expect("join"));
    }
    assert_eq!(created, 1);

    // TOTP records.
    assert_eq!(store.get_totp(&alice).await.expect("get_totp"), None);
    let rec = TotpRecord {
        ciphertext: vec![0, 1, 2, 255, 254, 0, 7],
        key_id: "k1".into(),
        enabled_at: now,
    };
    assert!(store.insert_totp(&alice, &rec).await.expect("insert"));
    let mut rec2 = rec.clone();
    rec2.ciphertext = vec![9; 40];
    assert!(!store
        .insert_totp(&alice, &rec2)
        .await
        .expect("insert twice"));
    assert_eq!(
        store.get_totp(&alice).await.expect("get"),
        Some(rec.clone())
    );
    assert_eq!(store.get_totp(&bob).await.expect("get bob"), None);
    let all = store.all_totp().await.expect("all");
    assert!(all.contains(&(alice.clone(), rec.clone())));
    let new = TotpRecord {
        ciphertext: vec![3; 44],
        key_id: "k2".into(),
        enabled_at: now,
    };
    assert!(!store
        .reencrypt_totp(&alice, &rec2, &new)
        .await
        .expect("cas stale"));
    assert!(store.reencrypt_totp(&alice, &rec, &new).await.expect("cas"));
    assert_eq!(
        store.get_totp(&alice).await.expect("get"),
        Some(new.clone())
    );
    assert!(!store
        .reencrypt_totp(&alice, &rec, &new)
        .await
        .expect("cas again"));
    assert!(store.delete_totp(&alice).await.expect("delete"));
    assert!(!store.delete_totp(&alice).await.expect("delete again"));
    assert_eq!(store.get_totp(&alice).await.expect("get"), None);

    // TOTP steps: strictly increasing, kept across re-enrollment, one winner
    // among parallel requests.
    assert!(store.accept_totp_step(&alice, 100).await.expect("step"));
    assert!(!store.accept_totp_step(&alice, 100).await.expect("replay"));
    assert!(!store.accept_totp_step(&alice, 99).await.expect("older"));
    assert!(store.accept_totp_step(&alice, 101).await.expect("newer"));
    assert!(store
        .accept_totp_step(&bob, 100)
        .await
        .expect("per subject"));
    assert!(store.insert_totp(&alice, &rec).await.expect("re-enroll"));
    assert!(!store
        .accept_totp_step(&alice, 101)
        .await
        .expect("replay after re-enroll"));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            let a = alice.clone();
            tokio::spawn(async move { s.accept_totp_step(&a, 500).await.expect("step") })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        accepted += usize::from(t.await.expect("join"));
    }
    assert_eq!(accepted, 1, "a time step is accepted once");

    // Recovery codes.
    assert!(store
        .recovery_codes(&alice)
        .await
        .expect("codes")
        .is_empty());
    let hashes: Vec<String> = (0..10).map(|i| format!("$argon2id$hash-{i}")).collect();
    store
        .replace_recovery_codes(&alice, &hashes)
        .await
        .expect("replace");
    let codes = store.recovery_codes(&alice).await.expect("codes");
    assert_eq!(codes.len(), 10);
    let mut got: Vec<String> = codes.iter().map(|(_, h)| h.clone()).collect();
    got.sort();
    let mut want = hashes.clone();
    want.sort();
    assert_eq!(got, want);
    let (id, _) = codes[0].clone();
    assert!(!store
        .spend_recovery_code(&bob, id)
        .await
        .expect("other subject"));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let s = store.clone();
            let a = alice.clone();
            tokio::spawn(async move { s.spend_recovery_code(&a, id).await.expect("spend") })
        })
        .collect();
    let mut spent = 0;
    for t in tasks {
        spent += usize::from(t.await.expect("join"));
    }
    assert_eq!(spent, 1, "a recovery code is spent once");
    assert_eq!(store.recovery_codes(&alice).await.expect("codes").len(), 9);
    store
        .replace_recovery_codes(&alice, &hashes[..3])
        .await
        .expect("replace");
    let codes = store.recovery_codes(&alice).await.expect("codes");
    assert_eq!(codes.len(), 3, "regeneration replaces all codes");
    assert!(
        !codes.iter().any(|(i, _)| *i == id),
        "a spent id does not come back"
    );
    store
        .replace_recovery_codes(&bob, &hashes[..2])
        .await
        .expect("replace bob");

    // Consecutive failures: counted one statement at a time, never past
    // the cap, however many arrive at once.
    const NO_CAP: u32 = 1_000;
    assert_eq!(store.failures(&alice).await.expect("failures"), 0);
    assert_eq!(
        store.record_failure(&alice, NO_CAP).await.expect("fail"),
        Some(1)
    );
    assert_eq!(
        store.record_failure(&alice, NO_CAP).await.expect("fail"),
        Some(2)
    );
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let s = store.clone();
            let a = alice.clone();
            tokio::spawn(async move { s.record_failure(&a, NO_CAP).await.expect("fail") })
        })
        .collect();
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(store.failures(&alice).await.expect("failures"), 12);
    assert_eq!(store.failures(&bob).await.expect("failures"), 0);
    store.clear_failures(&alice).await.expect("clear");
    assert_eq!(store.failures(&alice).await.expect("failures"), 0);
    // A cap: 30 parallel failures with cap 7 leave exactly 7, and exactly
    // one of them is the one that reached it.
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let s = store.clone();
            let a = alice.clone();
            tokio::spawn(async move { s.record_failure(&a, 7).await.expect("fail") })
        })
        .collect();
    let mut counted = Vec::new();
    for t in tasks {
        counted.push(t.await.expect("join"));
    }
    let mut got: Vec<u32> = counted.iter().flatten().copied().collect();
    got.sort_unstable();
    assert_eq!(got, (1..=7).collect::<Vec<u32>>(), "{counted:?}");
    assert_eq!(counted.iter().filter(|c| c.is_none()).count(), 23);
    assert_eq!(store.failures(&alice).await.expect("failures"), 7);
    assert_eq!(store.record_failure(&alice, 7).await.expect("at cap"), None);
    assert_eq!(store.failures(&alice).await.expect("failures"), 7);
    store.clear_failures(&alice).await.expect("clear");
    assert_eq!(
        store.record_failure(&alice, 7).await.expect("fail"),
        Some(1)
    );

    // WebAuthn credentials: ids are unique across users; the update after
    // an authentication is a compare-and-set on the stored passkey.
    let cred = |id: &str, sub: &str, passkey: &str, created_at: i64| WebAuthnCredential {
        id: format!("{ns}-{id}"),
        subject: sub.to_string(),
        name: format!("key {id}"),
        passkey: passkey.to_string(),
        sign_count: 1,
        backup_eligible: true,
        backup_state: false,
        created_at,
        last_used_at: None,
    };
    let k1 = cred("k1", &alice, r#"{"v":1}"#, 10);
    assert!(store.insert_webauthn_credential(&k1).await.expect("insert"));
    assert!(store
        .insert_webauthn_credential(&cred("k2", &alice, "{}", 20))
        .await
        .expect("insert"));
    assert!(
        !store
            .insert_webauthn_credential(&cred("k1", &bob, "{}", 30))
            .await
            .expect("insert"),
        "a credential id is registered once, whoever asks"
    );
    let listed = store.webauthn_credentials(&alice).await.expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], k1);
    assert!(store
        .webauthn_credentials(&bob)
        .await
        .expect("list")
        .is_empty());
    let used = WebAuthnCredential {
        passkey: r#"{"v":2}"#.into(),
        sign_count: 2,
        backup_state: true,
        last_used_at: Some(40),
        ..k1.clone()
    };
    assert!(store
        .update_webauthn_credential(&used, &k1.passkey)
        .await
        .expect("update"));
    assert!(
        !store
            .update_webauthn_credential(&used, &k1.passkey)
            .await
            .expect("update"),
        "a second update from the same stored state loses"
    );
    assert_eq!(
        store.webauthn_credentials(&alice).await.expect("list")[0],
        used
    );
    assert!(!store
        .delete_webauthn_credential(&bob, &k1.id)
        .await
        .expect("delete"));
    assert!(store
        .delete_webauthn_credential(&alice, &format!("{ns}-k2"))
        .await
        .expect("delete"));

    // Administrator reset: factors and failures go, profile and replay
    // protection stay, other users untouched.
    let report = store.reset_user(&alice).await.expect("reset");
    assert_eq!(
        report,
        ResetReport {
            totp: true,
            recovery_codes: 3,
            failures_cleared: true,
            remembered_devices: 0,
            webauthn_credentials: 1,
        }
    );
    assert!(store
        .webauthn_credentials(&alice)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(store.get_totp(&alice).await.expect("get"), None);
    assert!(store
        .recovery_codes(&alice)
        .await
        .expect("codes")
        .is_empty());
    assert_eq!(store.failures(&alice).await.expect("failures"), 0);
    assert_eq!(store.get_profile(&alice).await.expect("get"), Some(p));
    assert!(!store
        .accept_totp_step(&alice, 500)
        .await
        .expect("replay after reset"));
    assert_eq!(store.recovery_codes(&bob).await.expect("codes").len(), 2);
    assert_eq!(
        store.reset_user(&alice).await.expect("reset again"),
        ResetReport::default()
    );
}

fn device(id: &str, subject: &str, hash: &str, created_at: i64) -> DeviceRecord {
    DeviceRecord {
        id: id.into(),
        subject: subject.into(),
        name: Some(format!("device {id}")),
        token_hash: hash.into(),
        previous_hash: None,
        created_at,
        last_used_at: None,
        expires_at: created_at + 3600,
    }
}

/// The behaviour of a [`DeviceStore`] on an empty store: lookups by the
/// current and the previous hash, rotation exactly once under concurrency,
/// deletion per device and per subject. Subjects and ids are namespaced by
/// `ns`.
pub async fn device_store(store: Arc<dyn DeviceStore>, ns: &str) {
    let now = 1_700_000_000;
    let alice = format!("{ns}-alice");
    let bob = format!("{ns}-bob");
    let id = |n: &str| format!("{ns}-{n}");
    let h = |n: &str| format!("{ns}-hash-{n}");
    assert!(store.devices(&alice).await.expect("list").is_empty());
    assert_eq!(store.find_device(&h("1")).await.expect("find"), None);

    let a1 = device(&id("a1"), &alice, &h("1"), now);
    let a2 = device(&id("a2"), &alice, &h("2"), now + 1);
    let b1 = device(&id("b1"), &bob, &h("3"), now);
    for d in [&a2, &a1, &b1] {
        store.insert_device(d).await.expect("insert");
    }
    assert_eq!(
        store.devices(&alice).await.expect("list"),
        vec![a1.clone(), a2.clone()],
        "oldest first, only the subject's"
    );
    assert_eq!(
        store.find_device(&h("1")).await.expect("find"),
        Some(DeviceMatch::Current(a1.clone()))
    );
    // A second device with the same token hash cannot exist.
    assert!(store
        .insert_device(&device(&id("dup"), &bob, &h("1"), now))
        .await
        .is_err());

    // Rotation: the current hash becomes the previous one.
    assert!(store
        .rotate_device(&a1.id, &h("1"), &h("1b"), now + 10)
        .await
        .expect("rotate"));
    let rotated = DeviceRecord {
        token_hash: h("1b"),
        previous_hash: Some(h("1")),
        last_used_at: Some(now + 10),
        ..a1.clone()
    };
    assert_eq!(
        store.find_device(&h("1b")).await.expect("find"),
        Some(DeviceMatch::Current(rotated.clone()))
    );
    assert_eq!(
        store.find_device(&h("1")).await.expect("find"),
        Some(DeviceMatch::Previous(rotated.clone()))
    );
    // The old hash no longer rotates anything; nor does another device's id.
    assert!(!store
        .rotate_device(&a1.id, &h("1"), &h("1c"), now + 11)
        .await
        .expect("stale rotate"));
    assert!(!store
        .rotate_device(&a2.id, &h("1b"), &h("1c"), now + 11)
        .await
        .expect("wrong id"));
    // One generation back only.
    assert!(store
        .rotate_device(&a1.id, &h("1b"), &h("1c"), now + 12)
        .await
        .expect("rotate again"));
    assert_eq!(store.find_device(&h("1")).await.expect("find"), None);
    assert!(matches!(
        store.find_device(&h("1b")).await.expect("find"),
        Some(DeviceMatch::Previous(_))
    ));

    // Thirty uses of one token at once: exactly one rotates it.
    let tasks: Vec<_> = (0..30)
        .map(|i| {
            let store = store.clone();
            let (dev, old, new) = (a2.id.clone(), h("2"), h(&format!("2-{i}")));
            tokio::spawn(async move { store.rotate_device(&dev, &old, &new, now + 20).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        if t.await.expect("join").expect("rotate") {
            won += 1;
        }
    }
    assert_eq!(won, 1, "exactly one concurrent rotation wins");
    match store.find_device(&h("2")).await.expect("find") {
        Some(DeviceMatch::Previous(d)) => assert_eq!(d.id, a2.id),
        other => panic!("the old hash is the previous one: {other:?}"),
    }

    // Deleting is per subject: bob cannot delete alice's device.
    assert!(!store.delete_device(&bob, &a1.id).await.expect("delete"));
    assert!(store.delete_device(&alice, &a1.id).await.expect("delete"));
    assert!(!store.delete_device(&alice, &a1.id).await.expect("again"));
    assert_eq!(store.find_device(&h("1c")).await.expect("find"), None);
    assert_eq!(store.delete_devices(&alice).await.expect("delete all"), 1);
    assert!(store.devices(&alice).await.expect("list").is_empty());
    assert_eq!(store.devices(&bob).await.expect("list"), vec![b1.clone()]);
    assert_eq!(store.delete_devices(&alice).await.expect("none left"), 0);
    assert_eq!(store.delete_devices(&bob).await.expect("bob"), 1);
}

/// A profile store's devices go with `reset_user`, and only the user's.
pub async fn reset_revokes_devices(store: Arc<dyn ProfileStore>, ns: &str) {
    let now = 1_700_000_000;
    let carol = format!("{ns}-carol");
    let dave = format!("{ns}-dave");
    store.migrate().await.expect("migrate");
    for (i, sub) in [&carol, &carol, &dave].into_iter().enumerate() {
        store
            .insert_device(&device(
                &format!("{ns}-r{i}"),
                sub,
                &format!("{ns}-rh{i}"),
                now,
            ))
            .await
            .expect("insert");
    }
    let report = store.reset_user(&carol).await.expect("reset");
    assert_eq!(report.remembered_devices, 2, "{report:?}");
    assert!(store.devices(&carol).await.expect("list").is_empty());
    assert_eq!(store.devices(&dave).await.expect("list").len(), 1);
}

/// The in-process implementations, on a manual clock.
mod embedded {
    use std::sync::Arc;

    use twofa_authz::clock::{Clock, ManualClock};
    use twofa_authz::store::memory::{MemoryEphemeralStore, MemorySessionStore};
    use twofa_authz::store::sqlite::SqliteProfileStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_profile_store_conforms() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("t.db").display());
        let store = Arc::new(SqliteProfileStore::new(&url).expect("sqlite store"));
        super::profile_store(store.clone(), "sqlite").await;
        super::device_store(store.clone(), "sqlite").await;
        super::reset_revokes_devices(store, "sqlite").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_device_store_conforms() {
        let store = Arc::new(twofa_authz::store::memory::MemoryDeviceStore::new());
        super::device_store(store, "mem").await;
    }

    #[tokio::test]
    async fn memory_session_store_conforms() {
        let clock = ManualClock::new(1_700_000_000);
        let store = MemorySessionStore::new(clock.clone() as Arc<dyn Clock>);
        let c = clock.clone();
        super::session_store(&store, clock.now(), move |s| {
            c.advance(s as i64);
            async {}
        })
        .await;
    }

    #[tokio::test]
    async fn memory_ephemeral_store_conforms() {
        let clock = ManualClock::new(1_700_000_000);
        let store = Arc::new(MemoryEphemeralStore::new(clock.clone() as Arc<dyn Clock>));
        let c = clock.clone();
        super::ephemeral_store(store, "mem", move |s| {
            c.advance(s as i64);
            async {}
        })
        .await;
    }
}

/// The Redis stores on one plain server at `url`.
pub fn redis_sessions(url: &str, prefix: &str) -> twofa_authz::store::redis::RedisSessionStore {
    let cfg = twofa_authz::config::StorageConfig {
        redis_url: twofa_authz::config::SecretUrl::new(url),
        key_prefix: prefix.into(),
        ..Default::default()
    };
    redis_stores(&cfg).0
}

pub fn redis_ephemeral(url: &str, prefix: &str) -> twofa_authz::store::redis::RedisEphemeralStore {
    let cfg = twofa_authz::config::StorageConfig {
        redis_url: twofa_authz::config::SecretUrl::new(url),
        key_prefix: prefix.into(),
        ..Default::default()
    };
    redis_stores(&cfg).1
}

/// Both Redis stores for a storage configuration, each on its own link.
pub fn redis_stores(
    cfg: &twofa_authz::config::StorageConfig,
) -> (
    twofa_authz::store::redis::RedisSessionStore,
    twofa_authz::store::redis::RedisEphemeralStore,
) {
    use twofa_authz::store::redis::{Link, RedisEphemeralStore, RedisSessionStore};
    let target = twofa_authz::store::redis_target(cfg)
        .expect("redis target")
        .expect("not memory://");
    (
        RedisSessionStore::new(Arc::new(Link::new(target.clone())), cfg.key_prefix.clone()),
        RedisEphemeralStore::new(Arc::new(Link::new(target)), cfg.key_prefix.clone()),
    )
}

/// The session and ephemeral suites on every Redis topology but the plain
/// one (`session_store.rs`, `stores.rs`): TLS, a Cluster, Sentinel.
mod redis_topologies {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::support::redis::{TestRedis, Topology};

    async fn conforms(topology: Topology) {
        let redis = TestRedis::start(topology).await;
        let cfg = redis.storage_config("conf:");
        let (sessions, ephemeral) = super::redis_stores(&cfg);

        // What an invalidation channel connects to: the current primary,
        // none on a Cluster.
        let target = twofa_authz::store::redis_target(&cfg).unwrap().unwrap();
        let info = target.tracking_info().await.expect("tracking info");
        let port = info.map(|i| match i.addr() {
            redis::ConnectionAddr::Tcp(_, p) | redis::ConnectionAddr::TcpTls { port: p, .. } => *p,
            other => panic!("{other}"),
        });
        let want = match &redis {
            TestRedis::Cluster(_) => None,
            TestRedis::Sentinel(s) => Some(s.primary_port().await),
            other => Some(other.port()),
        };
        assert_eq!(port, want, "{topology:?}");
        let now = crate::support::keycloak::now();
        let wait = |s: u64| tokio::time::sleep(Duration::from_millis(s * 1000 + 100));
        super::session_store(&sessions, now, wait).await;
        super::ephemeral_store(Arc::new(ephemeral), &format!("{topology:?}"), wait).await;
        // Every key carries the prefix and a TTL, on whichever node it is.
        let mut con = redis.connection().await;
        let keys = redis.keys().await;
        for k in keys {
            assert!(k.starts_with("conf:"), "{k}");
            let ttl: i64 = redis::cmd("PTTL")
                .arg(&k)
                .query_async(&mut con)
                .await
                .expect("PTTL");
            assert!(ttl > 0, "{k} has no TTL");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stores_conform_over_tls() {
        conforms(Topology::Tls).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stores_conform_on_a_cluster() {
        conforms(Topology::Cluster).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stores_conform_under_sentinel() {
        conforms(Topology::Sentinel).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_stores_conform_under_sentinel_over_tls() {
        conforms(Topology::SentinelTls).await;
    }
}
