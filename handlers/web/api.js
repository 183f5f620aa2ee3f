// The session and the JSON API. The access token lives only in this module's memory; the
// refresh token is an httpOnly cookie the page never sees (README, Security model).

const SIGNED_IN = "vault.signedIn"; // a hint only (no secret): try to resume the session on load
const EARLY = 60; // renew this many seconds before the access token expires

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

let token = null;
let expiresAt = 0;
let username = null;
let renewing = null;
const listeners = new Set();

export function onSignedOut(fn) {
  listeners.add(fn);
}

export function currentUser() {
  return username;
}

async function errorFrom(resp) {
  let message = `${resp.status} ${resp.statusText}`;
  try {
    const body = await resp.json();
    if (body && typeof body.message === "string") message = body.message;
  } catch {
    // not JSON: keep the status line
  }
  const err = new ApiError(message, resp.status);
  err.retryAfter = Number(resp.headers.get("Retry-After")) || 0;
  return err;
}

async function sessionCall(path, body, auth) {
  const headers = { "X-Vault-Web": "1", "Content-Type": "application/json" };
  if (auth && token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(`/web/session${path}`, {
    method: "POST",
    headers,
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  if (!resp.ok) throw await errorFrom(resp);
  return resp.json();
}

let timer = null;

function adopt(pair) {
  clearTimeout(timer);
  // Renew ahead of expiry while the page is open: the download cookie (a copy of the access
  // token for plain download links) then never lapses either.
  timer = setTimeout(() => renew().catch(() => {}), Math.max(pair.expires_in - EARLY, 5) * 1000);
  token = pair.token;
  expiresAt = Date.now() / 1000 + pair.expires_in;
  username = pair.username;
  localStorage.setItem(SIGNED_IN, "1");
}

function forget() {
  clearTimeout(timer);
  token = null;
  username = null;
  expiresAt = 0;
  localStorage.removeItem(SIGNED_IN);
}

export async function signIn(user, password) {
  adopt(await sessionCall("", { username: user, password }));
}

export async function register(user, password, invite) {
  const json = { username: user, password };
  if (invite) json.invite = invite; // registration: invite (the default) asks for one
  await call("POST", "/register", { json, anonymous: true });
}

// Renew with the refresh cookie. Refresh tokens rotate, and presenting a used one ends the
// session, so tabs take turns: a Web Lock shared by every tab of this origin. Each tab's
// renewal then sends the cookie the previous one left, never the same one twice.
export function renew() {
  if (!renewing) {
    const run = async () => {
      try {
        adopt(await sessionCall("/refresh"));
      } catch (err) {
        if (err.status === 401) {
          forget();
          listeners.forEach((fn) => fn());
        }
        throw err;
      }
    };
    const locked = navigator.locks ? navigator.locks.request("vault-renew", run) : run();
    renewing = locked.finally(() => {
      renewing = null;
    });
  }
  return renewing;
}

// On load: resume the session if this browser had one (the cookie decides).
export async function resume() {
  if (!localStorage.getItem(SIGNED_IN)) return false;
  try {
    await renew();
    return true;
  } catch {
    return false;
  }
}

export async function signOut() {
  try {
    await sessionCall("/end", {}, false);
  } finally {
    forget();
  }
}

export async function signOutEverywhere() {
  await call("POST", "/logout/all");
  await signOut();
}

export async function changePassword(oldPassword, newPassword) {
  await fresh();
  adopt(await sessionCall("/password", { old_password: oldPassword, new_password: newPassword }, true));
}

// A valid access token, renewed first when it is about to expire.
export async function fresh() {
  if (!token || Date.now() / 1000 > expiresAt - EARLY) await renew();
  return token;
}

// One API call; a 401 (the token expired or was revoked meanwhile) renews once and retries.
export async function call(method, path, { json, raw, anonymous, accept } = {}) {
  for (let attempt = 0; ; attempt++) {
    const headers = {};
    if (!anonymous) headers.Authorization = `Bearer ${await fresh()}`;
    if (json !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      credentials: "same-origin",
    });
    if (resp.status === 401 && !anonymous && attempt === 0) {
      await renew();
      continue;
    }
    if (!resp.ok) throw await errorFrom(resp);
    if (raw) return resp;
    return accept === "none" ? null : resp.json();
  }
}

export function bearer() {
  return token ? `Bearer ${token}` : "";
}

export { errorFrom };
