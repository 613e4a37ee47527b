// Package console serves walhook's pages in the browser: the operators'
// console under /console and each subscriber owner's portal under /portal.
//
// Pages are rendered on the server with html/template from templates and
// assets embedded in the binary; one small script (assets/app.js, loaded
// from the same origin, no inline script) refreshes the live part of a page
// every few seconds.
//
// Invariants:
//   - Every change goes through walhook's SQL API (redeliver, ping,
//     activate, deactivate, rotate_secret, subscribe, set_events,
//     set_target, unsubscribe); the console reads tables but never writes
//     them. The portal runs each call in a transaction that names its owner
//     (set_config('walhook.owner', owner, true)), so the API's owner scoping
//     and URL rules apply as they do to the application, and it reads only
//     rows of that owner.
//   - The console is open only to a connection on a loopback address that
//     no proxy forwarded (no Forwarded, X-Forwarded-For or X-Real-IP
//     header); any other request needs a session from a login with
//     Config.Token, compared in constant time. Without a token the console
//     is closed to everyone but loopback.
//   - Every action is a POST that carries the session's CSRF token, comes
//     with a same-origin Origin (or Sec-Fetch-Site), and a SameSite=Strict
//     session cookie.
//   - The console never shows a secret: rotating one shows nothing. The
//     portal shows its owner a secret once, in the answer to the POST that
//     rotated or revealed it, never on a page that can be fetched again.
//   - A portal link is <payload>.<signature>: base64url('<expiry>:<owner>')
//     and its HMAC-SHA256 under walhook.portal_keys' key. A link whose
//     signature does not match, or whose expiry has passed, is refused.
package console
