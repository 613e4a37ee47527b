package console

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"golang.org/x/time/rate"
)

const (
	sessionCookie = "walhook_console"
	csrfField     = "csrf"
)

// auth issues and checks console sessions: a cookie <nonce>.<mac> whose mac
// is an HMAC of the nonce under a key made from the token and a random
// value of this process, so sessions end with a restart or a new token.
type auth struct {
	token []byte // empty: closed to all but loopback
	key   []byte
	// logins bounds sign-in attempts, all clients together, so that a
	// token cannot be guessed at speed.
	logins *rate.Limiter
}

func newAuth(token string) (*auth, error) {
	seed := make([]byte, 32)
	if _, err := rand.Read(seed); err != nil {
		return nil, err
	}
	k := sha256.Sum256(append(append([]byte("walhook console\x00"), seed...), token...))
	return &auth{token: []byte(token), key: k[:], logins: rate.NewLimiter(rate.Every(time.Second), 10)}, nil
}

func (a *auth) mac(parts ...string) string {
	m := hmac.New(sha256.New, a.key)
	for _, p := range parts {
		m.Write([]byte(p))
		m.Write([]byte{0})
	}
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// Session kinds, the first byte of a nonce: a loopback session is good only
// on loopback; a token session anywhere.
const (
	loopbackSession = "l"
	tokenSession    = "t"
)

func (a *auth) newSession(kind string) string {
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	n := kind + base64.RawURLEncoding.EncodeToString(b)
	return n + "." + a.mac("session", n)
}

// session returns the nonce of r's valid session cookie, or "": a
// loopback session counts only on loopback.
func (a *auth) session(r *http.Request) string {
	ck, err := r.Cookie(sessionCookie)
	if err != nil {
		return ""
	}
	n, m, ok := strings.Cut(ck.Value, ".")
	if !ok || n == "" || !hmac.Equal([]byte(m), []byte(a.mac("session", n))) {
		return ""
	}
	if strings.HasPrefix(n, loopbackSession) && !loopback(r) {
		return ""
	}
	return n
}

func (a *auth) csrf(nonce string) string { return a.mac("csrf", nonce) }

// tokenOK compares in constant time, the lengths included.
func (a *auth) tokenOK(got string) bool {
	if len(a.token) == 0 {
		return false
	}
	x, y := sha256.Sum256([]byte(got)), sha256.Sum256(a.token)
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

func setSession(w http.ResponseWriter, r *http.Request, value string) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/console", HttpOnly: true,
		Secure: r.TLS != nil, SameSite: http.SameSiteStrictMode})
}

// loopback says r came over a connection between loopback addresses and no
// proxy forwarded it.
func loopback(r *http.Request) bool {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Forwarded-Host", "X-Real-Ip"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	if !ok || !isLoopback(local.String()) {
		return false
	}
	return isLoopback(r.RemoteAddr)
}

func isLoopback(hostport string) bool {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return false
	}
	return ap.Addr().Unmap().IsLoopback()
}

// sameOrigin says a POST comes from a page of this origin: its Origin names
// this host, or, without Origin (or with "null", which a browser sends
// under some referrer policies), Sec-Fetch-Site says same-origin.
func sameOrigin(r *http.Request) bool {
	if o := r.Header.Get("Origin"); o != "" && o != "null" {
		u, err := url.Parse(o)
		return err == nil && u.Host != "" && strings.EqualFold(u.Host, r.Host)
	}
	return r.Header.Get("Sec-Fetch-Site") == "same-origin"
}

type ctxKey int

const csrfKey ctxKey = 0

// operator lets r through when it is from loopback or has a session from a
// token login; it issues loopback requests a session (for CSRF) and
// answers others with the login page.
func (c *Console) operator(h func(http.ResponseWriter, *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce := c.auth.session(r)
		if nonce == "" {
			if !loopback(r) {
				c.loginPage(w, r, http.StatusUnauthorized, "")
				return
			}
			v := c.auth.newSession(loopbackSession)
			setSession(w, r, v)
			nonce, _, _ = strings.Cut(v, ".")
		}
		h(w, r.WithContext(context.WithValue(r.Context(), csrfKey, c.auth.csrf(nonce))))
	})
}

// operatorAction is operator for a POST: it also wants a same origin and
// the session's CSRF token.
func (c *Console) operatorAction(h func(http.ResponseWriter, *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		nonce := c.auth.session(r)
		if nonce == "" {
			c.loginPage(w, r, http.StatusUnauthorized, "Your session has ended: sign in again.")
			return
		}
		if !sameOrigin(r) || !hmac.Equal([]byte(r.PostFormValue(csrfField)), []byte(c.auth.csrf(nonce))) {
			c.fail(w, r, http.StatusForbidden, "This form is stale or came from another site; reload the page and try again.")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), csrfKey, c.auth.csrf(nonce))))
	})
}

func (c *Console) login(w http.ResponseWriter, r *http.Request) {
	if !sameOrigin(r) {
		c.fail(w, r, http.StatusForbidden, "The sign-in form came from another site.")
		return
	}
	if !c.auth.logins.Allow() {
		c.loginPage(w, r, http.StatusTooManyRequests, "Too many sign-in attempts: wait a few seconds.")
		return
	}
	if !c.auth.tokenOK(r.PostFormValue("token")) {
		msg := "That token is not right."
		if len(c.auth.token) == 0 {
			msg = "The console is open only on loopback: start walhook with --console-token to use it from elsewhere."
		}
		c.loginPage(w, r, http.StatusUnauthorized, msg)
		return
	}
	setSession(w, r, c.auth.newSession(tokenSession))
	http.Redirect(w, r, "/console/", http.StatusSeeOther)
}

func (c *Console) loginPage(w http.ResponseWriter, r *http.Request, status int, msg string) {
	if msg == "" && len(c.auth.token) == 0 {
		msg = "The console is open only on loopback: start walhook with --console-token to use it from elsewhere."
	}
	c.render(w, r, status, "login", map[string]any{"Error": msg, "TokenSet": len(c.auth.token) > 0})
}
