package console_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/walhook/walhook/internal/e2e"
)

// Browser tests run in a real headless Chromium: Debian's chromium package
// (.ci/run installs it), or the binary WALHOOK_CHROMIUM names. A missing
// browser fails the test, as a missing PostgreSQL does: a skipped browser
// test would let a broken page pass.
//
// WALHOOK_SCREENSHOTS=<dir> writes console.png, console-attempts.png,
// portal.png and portal-phone.png there (the README shows the ones in
// docs/): make screenshots.

// findChromium returns the browser to drive.
func findChromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WALHOOK_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Fatalf("no Chromium for the browser tests: install Debian's chromium (apt-get install -y chromium; .ci/run does) or set WALHOOK_CHROMIUM to a Chrome or Chromium binary")
	return ""
}

// newBrowser starts a headless Chromium with a fresh profile, stopped (the
// process killed and waited for) when the test ends.
func newBrowser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(findChromium(t)),
		chromedp.Headless, chromedp.NoSandbox, chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-default-apps", true),
		chromedp.Flag("disable-features", "Translate,MediaRouter,OptimizationHints"),
		chromedp.Flag("password-store", "basic"),
		chromedp.Flag("force-color-profile", "srgb"),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	}
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancelAlloc)
	ctx, cancel := chromedp.NewContext(alloc)
	t.Cleanup(cancel)
	// The first action starts the browser, which lives as long as ctx.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	return ctx
}

// browse runs steps in tab within a deadline.
func browse(t *testing.T, tab context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		dctx, dcancel := context.WithTimeout(tab, 5*time.Second)
		defer dcancel()
		page, _ := chromedp.Run(dctx, chromedp.Evaluate[string](`location.href + "\n" + document.body.innerText`))
		t.Fatalf("%s: %v; the page:\n%s", what, err, page)
	}
}

// open navigates tab to url and returns the HTTP status of the page.
func open(t *testing.T, tab context.Context, url string) int64 {
	t.Helper()
	browse(t, tab, "open "+url, chromedp.Navigate(url))
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	status, err := chromedp.Run(ctx, chromedp.Evaluate[int64](`performance.getEntriesByType('navigation')[0].responseStatus`))
	if err != nil {
		t.Fatalf("status of %s: %v", url, err)
	}
	return status
}

// bodyText is the page's visible text.
func bodyText(t *testing.T, tab context.Context) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`document.body.innerText`))
	if err != nil {
		t.Fatalf("read the page: %v", err)
	}
	return s
}

// waitText waits until the page's text holds s.
func waitText(s string) chromedp.Action[chromedp.Void] {
	return chromedp.Poll[chromedp.Void](fmt.Sprintf(`document.body && document.body.innerText.includes(%s)`, strconv.Quote(s)),
		chromedp.WithPollingTimeout(20*time.Second))
}

// screenshot writes the page to $WALHOOK_SCREENSHOTS/name when that is set.
func screenshot(t *testing.T, tab context.Context, name string) {
	t.Helper()
	dir := os.Getenv("WALHOOK_SCREENSHOTS")
	if dir == "" {
		return
	}
	ctx, cancel := context.WithTimeout(tab, 30*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestBrowser drives the console and the portal in Chromium: the console
// lists a subscription and its failed attempt, and a click on Redeliver
// makes a new attempt at the receiver, which the page then shows without a
// reload; a portal link shows its owner's subscriptions and no other's; a
// tampered or expired link is refused; a console request from beyond
// loopback gets nothing without the token.
func TestBrowser(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	browser := newBrowser(t)
	alice := e.subscribeAs("alice", "/alice", "order.created", "order.paid")
	bob := e.subscribeAs("bob", "/bob", "customer.created")
	e.subscribeAs("carol", "/carol", "*")
	failed := e.failedAttempt(alice, "/alice")
	aliceTarget, bobTarget := e.Recv.URL+"/alice", e.Recv.URL+"/bob"

	t.Run("console redeliver", func(t *testing.T) {
		if code := open(t, browser, e.URL+"/console/"); code != 200 {
			t.Fatalf("GET /console/ = %d, want 200 on loopback", code)
		}
		browse(t, browser, "the console lists the subscriptions", waitText(aliceTarget), waitText(bobTarget), waitText("leader streaming"))
		screenshot(t, browser, "console.png")

		browse(t, browser, "open alice's subscription",
			chromedp.Click(chromedp.CSS(`#h-subs ~ .scroll a[href="/console/subscriptions/`+alice+`"]`)),
			chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf("#attempt-%d", failed))),
			waitText("HTTP 500"))
		if text := bodyText(t, browser); !strings.Contains(text, "failed") || !strings.Contains(text, "walhook.ping") {
			t.Fatalf("subscription page lacks the failed attempt:\n%s", text)
		}
		before := len(e.Recv.Deliveries("/alice"))
		e.Recv.SetStatus(nil)
		browse(t, browser, "click Redeliver",
			chromedp.Click(chromedp.CSS(fmt.Sprintf(`form[action="/console/attempts/%d/redeliver"] button`, failed))),
			chromedp.WaitVisible(chromedp.CSS(".flash")))
		browse(t, browser, "the redelivery queued", waitText("Redelivery queued"))
		e2e.WaitFor(t, 20*time.Second, "the redelivery at the receiver", func() bool {
			return len(e.Recv.Deliveries("/alice")) > before
		})
		// The page shows the new attempt by itself: no navigation happens
		// (the marker survives), the live part refreshes.
		browse(t, browser, "the new attempt shown without a reload",
			chromedp.Evaluate[chromedp.Void](`window.walhookNoReload = true`),
			chromedp.Poll[chromedp.Void](`window.walhookNoReload === true && document.querySelectorAll('#live li.attempt').length >= 2 && document.querySelector('#live .st-succeeded') !== null`,
				chromedp.WithPollingTimeout(20*time.Second)))
		browse(t, browser, "expand the attempt",
			chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`document.getElementById('attempt-%d').open = true`, failed)),
			chromedp.WaitVisible(chromedp.CSS(fmt.Sprintf("#attempt-%d pre", failed))))
		screenshot(t, browser, "console-attempts.png")
	})

	link := e.portalURL("alice")
	t.Run("portal shows one owner", func(t *testing.T) {
		if code := open(t, browser, link); code != 200 {
			t.Fatalf("GET portal link = %d, want 200", code)
		}
		browse(t, browser, "alice's portal", waitText(aliceTarget), waitText("Delivery log"), waitText("order.paid"))
		text := bodyText(t, browser)
		if strings.Contains(text, bobTarget) || strings.Contains(text, e.Recv.URL+"/carol") {
			t.Fatalf("alice's portal shows another owner's subscription:\n%s", text)
		}
		html, _ := chromedp.Run(browser, chromedp.OuterHTML(chromedp.CSS("html")))
		if strings.Contains(html, bob) {
			t.Fatalf("alice's portal names bob's subscription id")
		}
		screenshot(t, browser, "portal.png")
		browse(t, browser, "phone width", chromedp.EmulateViewport(390, 844, chromedp.EmulateScale(2)))
		if over, _ := chromedp.Run(browser, chromedp.Evaluate[bool](`document.documentElement.scrollWidth > window.innerWidth + 1`)); over {
			t.Errorf("the portal is wider than a phone screen")
		}
		screenshot(t, browser, "portal-phone.png")
		browse(t, browser, "desktop width", chromedp.EmulateViewport(1280, 900))
	})

	t.Run("portal refuses bad links", func(t *testing.T) {
		token := link[strings.LastIndex(link, "/portal/")+len("/portal/"):]
		payload, sig, _ := strings.Cut(token, ".")
		flipped := []byte(sig)
		if flipped[0] == 'A' {
			flipped[0] = 'B'
		} else {
			flipped[0] = 'A'
		}
		var key []byte
		if err := e.Conn.QueryRow(context.Background(), `SELECT key FROM walhook.portal_keys`).Scan(&key); err != nil {
			t.Fatal(err)
		}
		expired := base64.RawURLEncoding.EncodeToString(fmt.Appendf(nil, "%d:alice", time.Now().Add(-time.Second).Unix()))
		m := hmac.New(sha256.New, key)
		m.Write([]byte(expired))
		for _, tc := range []struct{ name, token, want string }{
			{"tampered signature", payload + "." + string(flipped), "not valid"},
			{"tampered owner", base64.RawURLEncoding.EncodeToString([]byte("9999999999:bob")) + "." + sig, "not valid"},
			{"expired", expired + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil)), "expired"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if code := open(t, browser, e.URL+"/portal/"+tc.token+"/"); code != 403 {
					t.Errorf("GET = %d, want 403", code)
				}
				text := bodyText(t, browser)
				if !strings.Contains(text, tc.want) || strings.Contains(text, aliceTarget) || strings.Contains(text, bobTarget) {
					t.Errorf("page = %q, want only %q", text, tc.want)
				}
			})
		}
	})

	t.Run("console beyond loopback needs the token", func(t *testing.T) {
		// A second browser (no cookies) behind a proxy: every request
		// carries X-Forwarded-For, as a reverse proxy adds it.
		tab := newBrowser(t)
		browse(t, tab, "act as a proxied client", chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := cdp.Call(ctx, tg, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
				Headers: network.Headers{"X-Forwarded-For": "203.0.113.7"}})
			return err
		}))
		for _, path := range []string{"/console/", "/console/subscriptions/" + alice, "/console/held"} {
			if code := open(t, tab, e.URL+path); code != 401 {
				t.Fatalf("GET %s without the token = %d, want 401", path, code)
			}
			if text := bodyText(t, tab); strings.Contains(text, aliceTarget) || !strings.Contains(text, "Console token") {
				t.Fatalf("GET %s without the token shows:\n%s", path, text)
			}
		}
		browse(t, tab, "sign in with a wrong token",
			chromedp.SendKeys(chromedp.CSS("#token"), "not-the-token"),
			chromedp.Click(chromedp.CSS("form.login button")),
			chromedp.WaitVisible(chromedp.CSS("p.error")))
		browse(t, tab, "refused", waitText("That token is not right"))
		if text := bodyText(t, tab); strings.Contains(text, aliceTarget) {
			t.Fatalf("a wrong token shows the console")
		}
		browse(t, tab, "sign in with the token",
			chromedp.SendKeys(chromedp.CSS("#token"), testToken),
			chromedp.Click(chromedp.CSS("form.login button")),
			chromedp.WaitVisible(chromedp.CSS("#h-subs")))
		browse(t, tab, "the console after signing in", waitText(aliceTarget))
	})
}
