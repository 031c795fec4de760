// The /ui/ page of twofa-authz: sign in (OIDC authorization code + PKCE, or
// the dev issuer), then the /user API. Plain JavaScript, no dependencies.
//
// Security notes:
// - The access token lives in this closure only, never in web storage; a
//   reload signs in again (silently, while the identity provider's session
//   lasts). Only the sign-in's `state`, PKCE verifier and `rd` wait in
//   sessionStorage across the redirect, and are removed on return.
// - Nothing from a server or a user is ever parsed as HTML: text goes in
//   through textContent, the QR code (SVG) as an <img> data: URL, so no
//   markup is injected.
// - `rd` comes checked by the server and is checked again here against this
//   page's own origin and the allowed origins.
(function () {
  'use strict';

  const cfg = JSON.parse(document.getElementById('twofa-config').textContent);
  let S = cfg.strings || {};
  const FLOW_KEY = 'twofa.signin';
  const $ = (id) => document.getElementById(id);
  // The API lives next to /ui/ (`../user`), whatever prefix a proxy adds.
  const base = new URL('../', location.href);

  let token = null;
  let idToken = null;
  let profile = null;
  // A sensitive call refused for want of a recent factor, run again once
  // one is passed.
  let retry = null;
  let rd = null;
  let shownCodes = null;
  let countdown = null;
  const resendTimers = {};

  // --- strings ---------------------------------------------------------------

  function t(key, vars) {
    let s = typeof S[key] === 'string' ? S[key] : key;
    if (vars) {
      s = s.replace(/\{([A-Za-z0-9_]+)\}/g, (m, n) =>
        Object.prototype.hasOwnProperty.call(vars, n) && vars[n] !== undefined ? String(vars[n]) : m);
    }
    return s;
  }

  function applyStrings() {
    document.documentElement.lang = cfg.lang;
    document.title = t("title");
    for (const el of document.querySelectorAll('[data-i18n]')) {
      el.textContent = t(el.getAttribute('data-i18n'));
    }
    for (const el of document.querySelectorAll('[data-i18n-alt]')) {
      el.setAttribute('alt', t(el.getAttribute('data-i18n-alt')));
    }
  }

  async function switchLanguage(tag) {
    try {
      const r = await fetch(new URL('strings.json?lang=' + encodeURIComponent(tag), location.href),
        { credentials: 'omit', cache: 'no-cache' });
      if (!r.ok) return;
      const data = await r.json();
      if (data && data.lang && data.lang !== cfg.lang && data.strings) {
        cfg.lang = data.lang;
        S = data.strings;
        applyStrings();
      }
    } catch (e) {
      // Keep the language the page has.
    }
  }

  // --- messages ----------------------------------------------------------------

  function stopCountdown() {
    if (countdown) {
      clearInterval(countdown.timer);
      for (const b of countdown.buttons) b.disabled = false;
      countdown = null;
    }
  }

  function showError(text) {
    const e = $('error');
    e.setAttribute('aria-live', 'assertive');
    e.textContent = text;
    e.hidden = false;
    $('status').hidden = true;
  }

  function showStatus(text) {
    // A success ends any countdown still ticking in the error line.
    stopCountdown();
    const s = $('status');
    s.textContent = text;
    s.hidden = false;
    $('error').hidden = true;
  }

  function clearMessages() {
    stopCountdown();
    $('error').hidden = true;
    $('status').hidden = true;
  }

  function problemText(res, seconds) {
    const b = res.body || {};
    let code = typeof b.code === 'string' ? b.code : 'unknown';
    if (res.status === 0) code = 'network';
    const vars = { code: code, attempts_remaining: b.attempts_remaining, seconds: seconds };
    const key = 'error.' + code;
    return Object.prototype.hasOwnProperty.call(S, key) ? t(key, vars) : t("error.unknown", vars);
  }

  // Every problem gets a sentence; 429 counts down from Retry-After (and
  // keeps `buttons` disabled meanwhile); 423 points to the administrator;
  // 401 asks to sign in again.
  function showProblem(res, buttons) {
    stopCountdown();
    if (res.status === 429 && res.retryAfter > 0) {
      let left = res.retryAfter;
      const btns = buttons || [];
      for (const b of btns) b.disabled = true;
      const tick = () => {
        if (left <= 0) {
          stopCountdown();
          $('error').hidden = true;
          return;
        }
        showError(problemText(res, left));
        // Announced once, not every second.
        if (left !== res.retryAfter) $('error').setAttribute('aria-live', 'off');
        left -= 1;
      };
      countdown = { timer: setInterval(tick, 1000), buttons: btns };
      tick();
      return;
    }
    showError(problemText(res, res.retryAfter));
    if (res.status === 423 && cfg.support_url) {
      const a = document.createElement('a');
      a.href = cfg.support_url;
      a.textContent = t("support");
      a.rel = 'noreferrer';
      $('error').append(' ', a);
    }
    if (res.status === 401 && token) {
      forget();
      showSignIn();
      showError(problemText(res));
    }
  }

  // --- the API -------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (token) headers.Authorization = 'Bearer ' + token;
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let r;
    try {
      r = await fetch(new URL(path, base), {
        method: method,
        headers: headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
        redirect: 'error',
      });
    } catch (e) {
      return { ok: false, status: 0, body: null, retryAfter: 0 };
    }
    let data = null;
    if (r.status !== 204) {
      try { data = await r.json(); } catch (e) { data = null; }
    }
    let ra = parseInt(r.headers.get('Retry-After') || '', 10);
    if (!(ra > 0) && data && data.retry_after > 0) ra = data.retry_after;
    return { ok: r.ok, status: r.status, body: data, retryAfter: ra > 0 ? ra : 0 };
  }

  function isFactorRequired(res) {
    return res.status === 403 && res.body && res.body.code === 'second_factor_required';
  }

  // A call that may need a (recent) second factor: on 403 the page asks for
  // one and runs the call again once it is passed.
  async function guarded(call, onOk, buttons) {
    const res = await call();
    if (res.ok) {
      clearMessages();
      return onOk(res);
    }
    if (isFactorRequired(res)) {
      retry = () => guarded(call, onOk, buttons);
      openVerify(res.body.max_age ? t("recent_factor_needed") : t("error.second_factor_required"),
        Array.isArray(res.body.methods) ? res.body.methods : null, true);
      return undefined;
    }
    showProblem(res, buttons);
    return undefined;
  }

  // --- redirects -------------------------------------------------------------------

  function safeRedirect(target) {
    if (typeof target !== 'string' || target === '') return null;
    let u;
    try { u = new URL(target, location.origin); } catch (e) { return null; }
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    if (u.username || u.password) return null;
    const allowed = Array.isArray(cfg.allowed_origins) ? cfg.allowed_origins : [];
    if (u.origin === location.origin || allowed.indexOf(u.origin) !== -1) return u.href;
    return null;
  }

  function goBack() {
    const target = safeRedirect(rd);
    if (!target) return false;
    showStatus(t("redirecting"));
    location.assign(target);
    return true;
  }

  // --- signing in -------------------------------------------------------------------

  function b64url(bytes) {
    let s = '';
    for (const b of bytes) s += String.fromCharCode(b);
    return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function redirectUri() {
    return location.origin + location.pathname;
  }

  function claimsOf(jwt) {
    try {
      const p = jwt.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
      const bin = atob(p);
      const bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
      const c = JSON.parse(new TextDecoder().decode(bytes));
      return c && typeof c === 'object' ? c : {};
    } catch (e) {
      return {};
    }
  }

  async function startSignIn() {
    if (!window.crypto || !crypto.subtle) {
      showError(t("sign_in_needs_https"));
      return;
    }
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(verifier));
    const challenge = b64url(new Uint8Array(digest));
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem(FLOW_KEY, JSON.stringify({ state: state, verifier: verifier, rd: rd, at: Date.now() }));
    const u = new URL(cfg.oidc.authorization_endpoint);
    const p = u.searchParams;
    p.set('response_type', 'code');
    p.set('client_id', cfg.oidc.client_id);
    p.set('redirect_uri', redirectUri());
    p.set('scope', 'openid');
    p.set('state', state);
    p.set('code_challenge', challenge);
    p.set('code_challenge_method', 'S256');
    // The code comes back in the fragment: never sent to a server, never in
    // an access log.
    p.set('response_mode', 'fragment');
    p.set('ui_locales', cfg.lang);
    location.assign(u.href);
  }

  // The authorization response, from the fragment (or the query, for a
  // provider that ignores response_mode).
  function authorizationResponse() {
    const frag = new URLSearchParams(location.hash.slice(1));
    if (frag.has('state')) return frag;
    const q = new URLSearchParams(location.search);
    if (q.has('state') && (q.has('code') || q.has('error'))) return q;
    return null;
  }

  async function finishSignIn(p) {
    let saved = null;
    try { saved = JSON.parse(sessionStorage.getItem(FLOW_KEY) || 'null'); } catch (e) { saved = null; }
    sessionStorage.removeItem(FLOW_KEY);
    // The code leaves the address bar and the history at once.
    history.replaceState(null, '', location.pathname);
    if (saved && saved.rd) rd = safeRedirect(saved.rd);
    const failed = () => {
      showSignIn();
      showError(t("sign_in_failed"));
    };
    if (!cfg.oidc || !saved || typeof saved.state !== 'string' || p.get('state') !== saved.state ||
        !(Date.now() - saved.at < 15 * 60 * 1000) || p.get('error') || !p.get('code')) {
      failed();
      return;
    }
    // RFC 9207: the response names its issuer.
    if (p.has('iss') && p.get('iss') !== cfg.oidc.issuer) {
      failed();
      return;
    }
    const form = new URLSearchParams();
    form.set('grant_type', 'authorization_code');
    form.set('code', p.get('code'));
    form.set('redirect_uri', redirectUri());
    form.set('client_id', cfg.oidc.client_id);
    form.set('code_verifier', saved.verifier);
    let data = null;
    try {
      const r = await fetch(cfg.oidc.token_endpoint, {
        method: 'POST',
        body: form,
        headers: { Accept: 'application/json' },
        credentials: 'omit',
        cache: 'no-store',
      });
      data = r.ok ? await r.json() : null;
    } catch (e) {
      data = null;
    }
    if (!data || typeof data.access_token !== 'string') {
      failed();
      return;
    }
    await signedIn(data.access_token, typeof data.id_token === 'string' ? data.id_token : null);
  }

  async function devSignIn(ev) {
    ev.preventDefault();
    const username = $('dev-username').value.trim();
    const email = $('dev-email').value.trim();
    if (!username) return;
    const body = { sub: username, username: username };
    if (email) body.email = email;
    const res = await api('POST', 'dev/token', body);
    if (!res.ok || !res.body || typeof res.body.access_token !== 'string') {
      showProblem(res);
      return;
    }
    await signedIn(res.body.access_token, null);
  }

  async function signedIn(access, id) {
    token = access;
    idToken = id;
    const claims = claimsOf(access);
    if (typeof claims.locale === 'string' && claims.locale) await switchLanguage(claims.locale);
    $('who').textContent = t("signed_in_as", { username: claims.preferred_username || claims.sub || '' });
    $('who').hidden = false;
    $('sign-out').hidden = false;
    clearMessages();
    const p = await loadProfile();
    if (!p) return;
    const unverified = !p.session || !p.session.second_factor;
    if (p.methods.length > 0 && unverified) {
      openVerify(t("confirm_factor_help"), null, false);
    } else {
      focus('account-h');
    }
  }

  function forget() {
    token = null;
    idToken = null;
    profile = null;
    retry = null;
    shownCodes = null;
    $('codes-list').replaceChildren();
    $('who').hidden = true;
    $('sign-out').hidden = true;
  }

  function signOut() {
    const hint = idToken;
    forget();
    clearMessages();
    if (cfg.oidc && cfg.oidc.end_session_endpoint) {
      const u = new URL(cfg.oidc.end_session_endpoint);
      u.searchParams.set('client_id', cfg.oidc.client_id);
      u.searchParams.set('post_logout_redirect_uri', redirectUri());
      if (hint) u.searchParams.set('id_token_hint', hint);
      location.assign(u.href);
      return;
    }
    showSignIn();
  }

  // --- views ---------------------------------------------------------------------

  const SECTIONS = ['loading', 'signin', 'verify', 'codes', 'enroll', 'account'];

  function show(ids) {
    for (const s of SECTIONS) $(s).hidden = ids.indexOf(s) === -1;
  }

  function focus(id) {
    const el = $(id);
    if (el) el.focus();
  }

  function showSignIn() {
    show(['signin']);
    const oidc = !!cfg.oidc;
    $('signin-oidc').hidden = !oidc;
    $('dev-form').hidden = !cfg.dev;
    const un = $('signin-unavailable');
    un.hidden = oidc || cfg.dev;
    un.textContent = cfg.oidc_error ? t("sign_in_unavailable") : t("sign_in_not_configured");
    if (cfg.dev) focus('dev-username'); else focus('signin-h');
  }

  async function loadProfile() {
    let res = await api('GET', 'user');
    if (res.status === 404 && res.body && res.body.code === 'profile_not_found') {
      res = await api('POST', 'user');
    }
    if (!res.ok || !res.body) {
      show(token ? [] : ['signin']);
      showProblem(res);
      return null;
    }
    profile = res.body;
    if (!Array.isArray(profile.methods)) profile.methods = [];
    renderAccount();
    return profile;
  }

  function contactText(value, verified, pending) {
    let s = value || '—';
    if (value) s += ' (' + (verified ? t("verified") : t("not_verified")) + ')';
    if (pending) s += ' · ' + pending + ' (' + t("pending") + ')';
    return s;
  }

  function renderAccount() {
    const p = profile;
    const pending = p.pending || {};
    if ($('codes').hidden && $('enroll').hidden) {
      show($('verify').hidden ? ['account'] : ['verify', 'account']);
    }
    $('acc-email').textContent = contactText(p.email, p.email_verified, pending.email);
    $('acc-mobile').textContent = contactText(p.mobile, p.mobile_verified, pending.mobile);
    const sf = p.session && p.session.second_factor;
    $('acc-session').textContent = sf ? t("session_verified", { method: factorName(sf) }) : t("session_not_verified");
    const list = $('acc-factors');
    list.replaceChildren();
    for (const m of p.methods) {
      const li = document.createElement('li');
      li.textContent = m === 'recovery'
        ? t("recovery_codes_remaining", { count: p.recovery_codes_remaining })
        : factorName(m);
      li.setAttribute('data-method', m);
      list.append(li);
    }
    $('acc-no-factor').hidden = p.methods.length > 0;
    $('act-passkey').hidden = !cfg.webauthn || !window.PublicKeyCredential;
    $('act-enroll').hidden = !!p.totp_enabled;
    $('act-remove-totp').hidden = !p.totp_enabled;
    $('act-regen').hidden = p.methods.length === 0;
    $('email-code-form').hidden = !pending.email;
    $('email-code-sent').textContent = pending.email ? t("code_sent_to", { sent_to: pending.email }) : '';
    $('mobile-code-form').hidden = !pending.mobile;
    $('mobile-code-sent').textContent = pending.mobile ? t("code_sent_to", { sent_to: pending.mobile }) : '';
    const target = sf ? safeRedirect(rd) : null;
    $('rd-continue').hidden = !target;
    if (target) $('rd-link').href = target;
  }

  function factorName(m) {
    const key = 'factor_' + (m === 'sms' ? 'sms' : m);
    return t(key);
  }

  // --- passing a factor -------------------------------------------------------------

  function openVerify(why, methods, cancellable) {
    const m = methods || (profile ? profile.methods : []);
    $('verify-why').textContent = why;
    // Passkeys first: the one factor a phishing page cannot relay.
    $('v-webauthn').hidden = m.indexOf('webauthn') === -1 || !window.PublicKeyCredential;
    $('v-totp').hidden = m.indexOf('totp') === -1;
    $('v-email').hidden = m.indexOf('email') === -1;
    $('v-sms').hidden = m.indexOf('sms') === -1;
    $('v-recovery').hidden = m.indexOf('recovery') === -1;
    $('v-cancel').hidden = !cancellable;
    $('codes').hidden = true;
    $('enroll').hidden = true;
    show(['verify', 'account']);
    focus('verify-h');
  }

  function closeVerify() {
    retry = null;
    $('verify').hidden = true;
    for (const id of ['v-totp-code', 'v-email-code', 'v-sms-code', 'v-recovery-code']) $(id).value = '';
    $('v-email-form').hidden = true;
    $('v-sms-form').hidden = true;
  }

  async function passed() {
    const again = retry;
    closeVerify();
    showStatus(t("verified_ok"));
    if (again) {
      await loadProfile();
      await again();
      return;
    }
    if (goBack()) return;
    await loadProfile();
    focus('account-h');
  }

  // --- passkeys (WebAuthn) ---------------------------------------------------------

  function fromB64url(s) {
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/'));
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function bytesOf(buf) {
    return b64url(new Uint8Array(buf));
  }

  // The server's options (binary members base64url) as the browser takes them.
  function creationOptions(o) {
    const pk = Object.assign({}, o.publicKey);
    pk.challenge = fromB64url(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: fromB64url(pk.user.id) });
    pk.excludeCredentials = (pk.excludeCredentials || []).map((c) => Object.assign({}, c, { id: fromB64url(c.id) }));
    return { publicKey: pk };
  }

  function requestOptions(o) {
    const pk = Object.assign({}, o.publicKey);
    pk.challenge = fromB64url(pk.challenge);
    pk.allowCredentials = (pk.allowCredentials || []).map((c) => Object.assign({}, c, { id: fromB64url(c.id) }));
    return { publicKey: pk };
  }

  function createdJson(c) {
    return {
      id: c.id,
      rawId: bytesOf(c.rawId),
      type: c.type,
      response: {
        attestationObject: bytesOf(c.response.attestationObject),
        clientDataJSON: bytesOf(c.response.clientDataJSON),
      },
      extensions: c.getClientExtensionResults(),
    };
  }

  function assertedJson(c) {
    return {
      id: c.id,
      rawId: bytesOf(c.rawId),
      type: c.type,
      response: {
        authenticatorData: bytesOf(c.response.authenticatorData),
        clientDataJSON: bytesOf(c.response.clientDataJSON),
        signature: bytesOf(c.response.signature),
        userHandle: c.response.userHandle ? bytesOf(c.response.userHandle) : null,
      },
      extensions: c.getClientExtensionResults(),
    };
  }

  // Exposed for the browser tests, which run the ceremonies against options
  // of their own making.
  window.twofaWebauthn = { creationOptions, requestOptions, createdJson, assertedJson };

  async function verifyPasskey() {
    const btn = $('v-webauthn-go');
    const start = await api('POST', 'user/webauthn/authenticate/start');
    if (!start.ok) return showProblem(start, [btn]);
    let cred;
    try {
      cred = await navigator.credentials.get(requestOptions(start.body));
    } catch (e) {
      cred = null;
    }
    if (!cred) return showError(t("passkey_failed"));
    const res = await api('POST', 'user/webauthn/authenticate/finish', { credential: assertedJson(cred) });
    if (res.ok) return passed();
    return showProblem(res, [btn]);
  }

  async function registerPasskey(start) {
    let cred;
    try {
      cred = await navigator.credentials.create(creationOptions(start.body));
    } catch (e) {
      cred = null;
    }
    if (!cred) return showError(t("passkey_failed"));
    const res = await api('POST', 'user/webauthn/register/finish', { credential: createdJson(cred) });
    if (!res.ok) return showProblem(res, [$('act-passkey')]);
    await loadProfile();
    showStatus(t("passkey_added"));
    focus('account-h');
    return undefined;
  }

  function addPasskey() {
    return guarded(() => api('POST', 'user/webauthn/register/start'), registerPasskey, [$('act-passkey')]);
  }

  function submitButton(form) {
    return form.querySelector('button[type="submit"]');
  }

  async function verifyTotp(ev) {
    ev.preventDefault();
    const code = $('v-totp-code').value.replace(/\s+/g, '');
    const res = await api('POST', 'user/verify-totp', { totp: code, is_new_seed: false });
    if (res.ok) return passed();
    $('v-totp-code').select();
    return showProblem(res, [submitButton($('v-totp'))]);
  }

  async function verifyRecovery(ev) {
    ev.preventDefault();
    const res = await api('POST', 'user/verify-recovery-code', { code: $('v-recovery-code').value.trim() });
    if (res.ok) return passed();
    $('v-recovery-code').select();
    return showProblem(res, [submitButton($('v-recovery'))]);
  }

  function startResend(channel, seconds) {
    const btn = $('v-' + channel + '-resend');
    const send = $('v-' + channel + '-send');
    clearInterval(resendTimers[channel]);
    let left = seconds;
    const tick = () => {
      if (left <= 0) {
        clearInterval(resendTimers[channel]);
        btn.disabled = false;
        send.disabled = false;
        btn.textContent = t("resend");
        return;
      }
      btn.disabled = true;
      send.disabled = true;
      btn.textContent = t("resend_in", { seconds: left });
      left -= 1;
    };
    resendTimers[channel] = setInterval(tick, 1000);
    tick();
  }

  async function sendCode(channel) {
    const res = await api('POST', 'user/send-otp', { otp_type: channel === 'sms' ? 'mobile' : 'email' });
    if (res.status === 429 && res.retryAfter > 0) startResend(channel, res.retryAfter);
    if (!res.ok) return showProblem(res);
    $('v-' + channel + '-form').hidden = false;
    $('v-' + channel + '-sent').textContent = t("code_sent_to", { sent_to: res.body.sent_to });
    showStatus(t("code_sent_to", { sent_to: res.body.sent_to }));
    startResend(channel, cfg.resend_interval || 60);
    focus('v-' + channel + '-code');
    return undefined;
  }

  async function verifyCode(ev, channel) {
    ev.preventDefault();
    const input = $('v-' + channel + '-code');
    const res = await api('POST', 'user/verify-otp', {
      otp: input.value.replace(/\s+/g, ''),
      otp_type: channel === 'sms' ? 'mobile' : 'email',
      purpose: 'login',
    });
    if (res.ok) return passed();
    input.select();
    return showProblem(res, [submitButton($('v-' + channel + '-form'))]);
  }

  // --- enrolling TOTP, recovery codes -------------------------------------------------

  function svgDataUrl(svg) {
    const bytes = new TextEncoder().encode(svg);
    let bin = '';
    for (const b of bytes) bin += String.fromCharCode(b);
    return 'data:image/svg+xml;base64,' + btoa(bin);
  }

  function showEnroll(res) {
    const g = res.body;
    $('enroll-qr').src = svgDataUrl(g.qr_svg);
    // Groups of four, as authenticator apps show them.
    $('enroll-secret').textContent = String(g.secret).replace(/(.{4})(?=.)/g, '$1 ');
    const link = $('enroll-link');
    if (typeof g.otpauth_uri === 'string' && g.otpauth_uri.indexOf('otpauth://') === 0) {
      link.href = g.otpauth_uri;
      link.hidden = false;
    } else {
      link.hidden = true;
    }
    $('enroll-code').value = '';
    show(['enroll']);
    focus('enroll-h');
  }

  function closeEnroll() {
    $('enroll-qr').removeAttribute('src');
    $('enroll-secret').textContent = '';
    $('enroll-link').removeAttribute('href');
    $('enroll').hidden = true;
  }

  async function confirmEnroll(ev) {
    ev.preventDefault();
    const code = $('enroll-code').value.replace(/\s+/g, '');
    await guarded(() => api('POST', 'user/verify-totp', { totp: code, is_new_seed: true }), (res) => {
      closeEnroll();
      showStatus(t("totp_enrolled"));
      if (Array.isArray(res.body.recovery_codes) && res.body.recovery_codes.length) {
        showCodes(res.body.recovery_codes);
      } else {
        loadProfile();
      }
    }, [submitButton($('enroll-form'))]);
  }

  function showCodes(codes) {
    shownCodes = codes.map(String);
    const list = $('codes-list');
    list.replaceChildren();
    for (const c of shownCodes) {
      const li = document.createElement('li');
      li.textContent = c;
      list.append(li);
    }
    show(['codes']);
    focus('codes-h');
  }

  function codesText() {
    return (shownCodes || []).join('\n') + '\n';
  }

  async function copyCodes() {
    try {
      await navigator.clipboard.writeText(codesText());
      showStatus(t("copied"));
    } catch (e) {
      showError(t("copy_failed"));
    }
  }

  function downloadCodes() {
    const blob = new Blob([codesText()], { type: 'text/plain;charset=utf-8' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'recovery-codes.txt';
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // Shown once: gone from the page (and from memory) when the user is done.
  async function codesDone() {
    shownCodes = null;
    $('codes-list').replaceChildren();
    $('codes').hidden = true;
    clearMessages();
    if (goBack()) return;
    await loadProfile();
    focus('account-h');
  }

  // --- account actions ------------------------------------------------------------------

  let pendingConfirm = null;

  function askConfirm(text, action) {
    pendingConfirm = action;
    $('confirm-text').textContent = text;
    $('confirm-box').hidden = false;
    focus('confirm-yes');
  }

  function closeConfirm() {
    pendingConfirm = null;
    $('confirm-box').hidden = true;
  }

  async function changeContact(ev, field) {
    ev.preventDefault();
    const input = $(field === 'email' ? 'new-email' : 'new-mobile');
    const value = input.value.trim();
    const body = {};
    body[field] = value;
    const form = $(field + '-form');
    await guarded(() => api('PATCH', 'user', body), async () => {
      input.value = '';
      await loadProfile();
      showStatus(t("code_sent_to", { sent_to: value }));
      focus(field + '-code');
    }, [submitButton(form)]);
  }

  async function confirmContact(ev, field) {
    ev.preventDefault();
    const input = $(field + '-code');
    const otp = input.value.replace(/\s+/g, '');
    await guarded(() => api('POST', 'user/verify-otp', {
      otp: otp,
      otp_type: field === 'email' ? 'email' : 'mobile',
      purpose: 'contact',
    }), async () => {
      input.value = '';
      await loadProfile();
      showStatus(t("contact_confirmed"));
    }, [submitButton($(field + '-code-form'))]);
  }

  function enroll() {
    return guarded(() => api('POST', 'user/generate-totp'), showEnroll, [$('act-enroll')]);
  }

  function removeTotp() {
    askConfirm(t("remove_totp_confirm"), () => guarded(() => api('DELETE', 'user/totp'), async () => {
      await loadProfile();
      showStatus(t("totp_removed"));
      focus('account-h');
    }, [$('act-remove-totp')]));
  }

  function regenerate() {
    askConfirm(t("regenerate_recovery_codes_confirm"), () => guarded(() => api('POST', 'user/recovery-codes'),
      (res) => showCodes(res.body.recovery_codes), [$('act-regen')]));
  }

  // --- wiring ----------------------------------------------------------------------

  function on(id, ev, fn) {
    $(id).addEventListener(ev, fn);
  }

  async function start() {
    applyStrings();
    $('product').textContent = cfg.product_name || '';
    rd = safeRedirect(cfg.rd);
    on('signin-oidc', 'click', startSignIn);
    on('dev-form', 'submit', devSignIn);
    on('sign-out', 'click', signOut);
    on('v-webauthn-go', 'click', verifyPasskey);
    on('act-passkey', 'click', addPasskey);
    on('v-totp', 'submit', verifyTotp);
    on('v-recovery', 'submit', verifyRecovery);
    on('v-email-send', 'click', () => sendCode('email'));
    on('v-email-resend', 'click', () => sendCode('email'));
    on('v-email-form', 'submit', (ev) => verifyCode(ev, 'email'));
    on('v-sms-send', 'click', () => sendCode('sms'));
    on('v-sms-resend', 'click', () => sendCode('sms'));
    on('v-sms-form', 'submit', (ev) => verifyCode(ev, 'sms'));
    on('v-cancel', 'click', () => { closeVerify(); clearMessages(); renderAccount(); focus('account-h'); });
    on('codes-copy', 'click', copyCodes);
    on('codes-download', 'click', downloadCodes);
    on('codes-done', 'click', codesDone);
    on('act-enroll', 'click', enroll);
    on('act-remove-totp', 'click', removeTotp);
    on('act-regen', 'click', regenerate);
    on('confirm-yes', 'click', () => { const a = pendingConfirm; closeConfirm(); if (a) a(); });
    on('confirm-no', 'click', closeConfirm);
    on('enroll-form', 'submit', confirmEnroll);
    on('enroll-cancel', 'click', () => { closeEnroll(); renderAccount(); focus('account-h'); });
    on('email-form', 'submit', (ev) => changeContact(ev, 'email'));
    on('mobile-form', 'submit', (ev) => changeContact(ev, 'mobile'));
    on('email-code-form', 'submit', (ev) => confirmContact(ev, 'email'));
    on('mobile-code-form', 'submit', (ev) => confirmContact(ev, 'mobile'));
    if (cfg.rd_rejected) {
      $('rd-note').textContent = t("rd_rejected");
      $('rd-note').hidden = false;
    }
    const p = authorizationResponse();
    if (p) {
      show(['loading']);
      await finishSignIn(p);
      return;
    }
    showSignIn();
  }

  start();
})();
