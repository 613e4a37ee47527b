package deliver

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrRedirect means the receiver answered with a redirect, which is never
// followed: a redirect could point a request at an address the target check
// would have refused.
var ErrRedirect = errors.New("redirect not followed")

// BlockedAddressError means the address a target resolved to is not allowed.
type BlockedAddressError struct {
	Addr   netip.Addr
	Reason string
}

func (e *BlockedAddressError) Error() string {
	return fmt.Sprintf("destination %s is %s; refused (allow with --allow-private-targets)", e.Addr, e.Reason)
}

// ClientConfig configures NewClient.
type ClientConfig struct {
	Timeout      time.Duration // the whole attempt, body included
	AllowPrivate bool
	// AllowCIDRs are ranges dialled even when AllowPrivate is false, so an
	// operator can permit one internal receiver without opening every
	// private address (the cloud metadata service, say).
	AllowCIDRs []netip.Prefix
	MaxPerHost int
}

// NewClient returns the HTTP client deliveries use: no proxy from the
// environment, no redirects, TLS 1.2 or newer, and a dial-time check of the
// address actually connected to, so DNS answers cannot smuggle a private
// address past a check made on the name.
func NewClient(cfg ClientConfig) *http.Client {
	dialer := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		// Control runs after name resolution, on the address about to be
		// connected to, before any packet is sent.
		Control: func(_, address string, _ syscall.RawConn) error {
			return checkDial(address, cfg.AllowPrivate, cfg.AllowCIDRs)
		},
	}
	tr := &http.Transport{
		// Never from the environment: a proxy would make the dial-time
		// check judge the proxy's address instead of the receiver's.
		Proxy:       nil,
		DialContext: dialer.DialContext,
		// Verification stays on (InsecureSkipVerify false).
		TLSClientConfig:     &tls.Config{MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout: 10 * time.Second,
		// No ResponseHeaderTimeout: the client's Timeout below bounds the
		// whole exchange already, and each would arm a timer per request.
		// Without this the transport asks for gzip and inflates the body
		// transparently, so MaxResponseBytes would cap compressed bytes and
		// a small gzip bomb could expand to gigabytes. Receivers' answers
		// are short; we only keep an excerpt.
		DisableCompression:  true,
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: max(cfg.MaxPerHost, 2),
		IdleConnTimeout:     90 * time.Second,
		ForceAttemptHTTP2:   true,
	}
	return &http.Client{
		Transport: tr,
		// Bounds the whole exchange, body read included, even for a
		// caller that forgets a context deadline.
		Timeout: cfg.Timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// checkDial refuses address (ip:port, as the dialer passes it) when it is
// not public, unless allowPrivate or it falls in one of allow.
func checkDial(address string, allowPrivate bool, allow []netip.Prefix) error {
	if allowPrivate {
		return nil
	}
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return fmt.Errorf("dial %s: %w", address, err)
	}
	// A zone is dropped because netip.Prefix.Contains never matches a zoned
	// address: fe80::1%eth0 would otherwise pass every check.
	addr := ap.Addr().Unmap().WithZone("")
	for _, p := range allow {
		if p.Contains(addr) {
			return nil
		}
	}
	if reason := blockedReason(addr); reason != "" {
		return &BlockedAddressError{Addr: addr, Reason: reason}
	}
	return nil
}

var blockedPrefixes = []struct {
	p      netip.Prefix
	reason string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), "an unspecified or \"this network\" address"},
	{netip.MustParsePrefix("10.0.0.0/8"), "a private address"},
	{netip.MustParsePrefix("100.64.0.0/10"), "a carrier-grade NAT address"},
	{netip.MustParsePrefix("127.0.0.0/8"), "a loopback address"},
	{netip.MustParsePrefix("169.254.0.0/16"), "a link-local address"},
	{netip.MustParsePrefix("172.16.0.0/12"), "a private address"},
	{netip.MustParsePrefix("192.0.0.0/24"), "a reserved address"},
	{netip.MustParsePrefix("192.0.2.0/24"), "a documentation address"},
	{netip.MustParsePrefix("192.88.99.0/24"), "a reserved address"},
	{netip.MustParsePrefix("192.168.0.0/16"), "a private address"},
	{netip.MustParsePrefix("198.18.0.0/15"), "a benchmarking address"},
	{netip.MustParsePrefix("198.51.100.0/24"), "a documentation address"},
	{netip.MustParsePrefix("203.0.113.0/24"), "a documentation address"},
	{netip.MustParsePrefix("224.0.0.0/4"), "a multicast address"},
	{netip.MustParsePrefix("240.0.0.0/4"), "a reserved address"},
	{netip.MustParsePrefix("::/128"), "an unspecified address"},
	{netip.MustParsePrefix("::1/128"), "a loopback address"},
	{netip.MustParsePrefix("64:ff9b::/96"), "a NAT64 address"},
	{netip.MustParsePrefix("64:ff9b:1::/48"), "a NAT64 address"},
	{netip.MustParsePrefix("100::/64"), "a discard address"},
	{netip.MustParsePrefix("2001::/23"), "a reserved address"},
	{netip.MustParsePrefix("2001:db8::/32"), "a documentation address"},
	{netip.MustParsePrefix("2002::/16"), "a 6to4 address"},
	{netip.MustParsePrefix("fc00::/7"), "a private address"},
	{netip.MustParsePrefix("fe80::/10"), "a link-local address"},
	{netip.MustParsePrefix("ff00::/8"), "a multicast address"},
}

// blockedReason says why addr may not be dialled, or "" when it may. IPv4
// addresses mapped into IPv6 are judged as IPv4.
func blockedReason(addr netip.Addr) string {
	if !addr.IsValid() {
		return "an invalid address"
	}
	addr = addr.Unmap().WithZone("")
	for _, b := range blockedPrefixes {
		if b.p.Contains(addr) {
			return b.reason
		}
	}
	return ""
}
