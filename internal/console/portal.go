package console

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Errors of a portal link.
var (
	// errLinkInvalid means the link is malformed or its signature does not
	// match: it was not made by walhook.portal_url of this installation.
	errLinkInvalid = errors.New("invalid portal link")
	// errLinkExpired means the link's time is up.
	errLinkExpired = errors.New("expired portal link")
)

// key returns walhook.portal_keys' key, read once.
func (c *Console) key(ctx context.Context) ([]byte, error) {
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	if c.portalKey != nil {
		return c.portalKey, nil
	}
	p, err := c.db()
	if err != nil {
		return nil, err
	}
	var k []byte
	if err := p.QueryRow(ctx, `SELECT key FROM walhook.portal_keys WHERE id = 1`).Scan(&k); err != nil {
		return nil, err
	}
	c.portalKey = k
	return k, nil
}

// verifyLink returns the owner a portal link is for.
func verifyLink(key []byte, token string, now time.Time) (string, error) {
	payload, sig, ok := strings.Cut(token, ".")
	if !ok || payload == "" || sig == "" {
		return "", errLinkInvalid
	}
	want := hmac.New(sha256.New, key)
	want.Write([]byte(payload))
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, want.Sum(nil)) {
		return "", errLinkInvalid
	}
	raw, err := base64.RawURLEncoding.DecodeString(payload)
	if err != nil {
		return "", errLinkInvalid
	}
	exp, owner, ok := strings.Cut(string(raw), ":")
	secs, err := strconv.ParseInt(exp, 10, 64)
	if !ok || err != nil || owner == "" {
		return "", errLinkInvalid
	}
	if now.Unix() >= secs {
		return "", errLinkExpired
	}
	return owner, nil
}

type ownerKey struct{}

// owner lets r through when its link is valid, with the link's owner in
// the context.
func (c *Console) owner(h func(http.ResponseWriter, *http.Request)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
		defer cancel()
		k, err := c.key(ctx)
		if err != nil {
			c.dbFail(w, r, err)
			return
		}
		owner, err := verifyLink(k, r.PathValue("token"), time.Now())
		switch {
		case errors.Is(err, errLinkExpired):
			c.fail(w, r, http.StatusForbidden, "This link has expired. Open your webhook settings again from the application for a new one.")
			return
		case err != nil:
			c.fail(w, r, http.StatusForbidden, "This link is not valid. Open your webhook settings again from the application.")
			return
		}
		h(w, r.WithContext(context.WithValue(r.Context(), ownerKey{}, owner)))
	})
}

// ownerAction is owner for a POST, which must also come from a page of this
// origin. The link in the path is the credential, so no other site can
// forge the form without it.
func (c *Console) ownerAction(h func(http.ResponseWriter, *http.Request)) http.Handler {
	inner := c.owner(h)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !sameOrigin(r) {
			c.fail(w, r, http.StatusForbidden, "This form came from another site.")
			return
		}
		inner.ServeHTTP(w, r)
	})
}

func ownerOf(r *http.Request) string { s, _ := r.Context().Value(ownerKey{}).(string); return s }

func portalBase(r *http.Request) string { return "/portal/" + r.PathValue("token") }

// readAs runs fn in a read-only transaction that acts for owner.
func (c *Console) readAs(ctx context.Context, owner string, fn func(pgx.Tx) error) error {
	return c.read(ctx, func(tx pgx.Tx) error {
		if err := scopeTo(ctx, tx, owner); err != nil {
			return err
		}
		return fn(tx)
	})
}

func (c *Console) portalHome(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), queryTimeout)
	defer cancel()
	owner := ownerOf(r)
	var subs []subscription
	var attempts []attempt
	var events []string
	err := c.readAs(ctx, owner, func(tx pgx.Tx) error {
		var err error
		if subs, err = listSubscriptions(ctx, tx, filter{Owner: owner}); err != nil {
			return err
		}
		if attempts, err = listAttempts(ctx, tx, "", owner, 50); err != nil {
			return err
		}
		events, err = eventNames(ctx, tx)
		return err
	})
	if err != nil {
		c.dbFail(w, r, err)
		return
	}
	c.renderView(w, r, http.StatusOK, "portal", view{Title: "Webhooks", Portal: true, Base: portalBase(r),
		Data: map[string]any{"Owner": owner, "Subscriptions": subs, "Attempts": attempts, "Events": events}})
}

func (c *Console) portalSubscription(w http.ResponseWriter, r *http.Request) {
	owner, id := ownerOf(r), r.PathValue("id")
	if !validUUID(id) {
		c.fail(w, r, http.StatusNotFound, "No such subscription.")
		return
	}
	var events []string
	s, attempts, ok := c.loadSubscription(w, r, id, owner, func(ctx context.Context, tx pgx.Tx) (err error) {
		events, err = eventNames(ctx, tx)
		return err
	})
	if !ok {
		return
	}
	chosen := map[string]bool{}
	for _, e := range s.Events {
		chosen[e] = true
	}
	c.renderView(w, r, http.StatusOK, "portal_subscription", view{Title: "Webhook " + s.TargetURL, Portal: true, Base: portalBase(r),
		Data: map[string]any{"Owner": owner, "Sub": s, "Attempts": attempts, "Events": events, "Chosen": chosen}})
}

// portalCreate subscribes the owner: events from the picker, target URL.
func (c *Console) portalCreate(w http.ResponseWriter, r *http.Request) {
	owner := ownerOf(r)
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, http.StatusBadRequest, "Could not read the form.")
		return
	}
	events := r.PostForm["event"]
	if len(events) == 0 {
		c.fail(w, r, http.StatusBadRequest, "Pick at least one event.")
		return
	}
	var id string
	if err := c.execScan(r.Context(), owner, &id, `SELECT walhook.subscribe($1::text[], $2, $3)::text`,
		events, strings.TrimSpace(r.PostFormValue("target_url")), owner); err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, portalBase(r)+"/subscriptions/"+id+"?ok=create", http.StatusSeeOther)
}

func (c *Console) portalSubscriptionAction(w http.ResponseWriter, r *http.Request) {
	owner, id, action := ownerOf(r), r.PathValue("id"), r.PathValue("action")
	if !validUUID(id) {
		c.fail(w, r, http.StatusNotFound, "No such subscription.")
		return
	}
	back := portalBase(r) + "/subscriptions/" + id + "?ok=" + action
	var err error
	switch action {
	case "ping":
		err = c.exec(r.Context(), owner, `SELECT walhook.ping($1)::text`, id)
	case "activate":
		err = c.exec(r.Context(), owner, `SELECT walhook.activate($1)::text`, id)
	case "deactivate":
		err = c.exec(r.Context(), owner, `SELECT walhook.deactivate($1, 'Deactivated by its owner')::text`, id)
	case "target":
		err = c.exec(r.Context(), owner, `SELECT walhook.set_target($1, $2)::text`, id, strings.TrimSpace(r.PostFormValue("target_url")))
	case "events":
		if err := r.ParseForm(); err != nil || len(r.PostForm["event"]) == 0 {
			c.fail(w, r, http.StatusBadRequest, "Pick at least one event.")
			return
		}
		err = c.exec(r.Context(), owner, `SELECT walhook.set_events($1, $2::text[])::text`, id, r.PostForm["event"])
	case "delete":
		err = c.exec(r.Context(), owner, `SELECT walhook.unsubscribe($1)::text`, id)
		back = portalBase(r) + "/?ok=delete"
	case "rotate", "reveal":
		// The one page that shows a secret: the answer to this POST,
		// never stored, never cached.
		sql := `SELECT walhook.rotate_secret($1)`
		if action == "reveal" {
			sql = `SELECT coalesce(walhook.secret($1), '')`
		}
		var secret string
		if err := c.execScan(r.Context(), owner, &secret, sql, id); err != nil {
			c.actionFail(w, r, err)
			return
		}
		c.renderView(w, r, http.StatusOK, "result", view{Title: "Signing secret", Portal: true, Base: portalBase(r),
			Data: map[string]any{"Secret": secret, "Rotated": action == "rotate", "Back": portalBase(r) + "/subscriptions/" + id}})
		return
	default:
		c.fail(w, r, http.StatusNotFound, "No such action.")
		return
	}
	if err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, back, http.StatusSeeOther)
}

func (c *Console) portalRedeliver(w http.ResponseWriter, r *http.Request) {
	owner := ownerOf(r)
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		c.fail(w, r, http.StatusNotFound, "No such attempt.")
		return
	}
	var sub string
	if err := c.execScan(r.Context(), owner, &sub, `SELECT a.subscription_id::text FROM walhook.attempts a
		JOIN walhook.subscriptions s ON s.id = a.subscription_id
		WHERE a.id = $1 AND s.owner = $2 AND walhook.redeliver($1) IS NOT NULL`, id, owner); err != nil {
		c.actionFail(w, r, err)
		return
	}
	http.Redirect(w, r, portalBase(r)+"/subscriptions/"+sub+"?ok=redeliver", http.StatusSeeOther)
}

// eventNames lists walhook.events, for the event picker.
func eventNames(ctx context.Context, tx pgx.Tx) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT name FROM walhook.events ORDER BY name`)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
