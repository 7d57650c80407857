package web

import (
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// client is who sent a request: the browser's address and whether it
// reached the (trusted) proxy over https.
type client struct {
	addr  netip.Addr
	https bool
}

type clientKey struct{}

func clientOf(r *http.Request) client {
	c, _ := r.Context().Value(clientKey{}).(client)
	return c
}

// maxForwardHops bounds the X-Forwarded-For entries read.
const maxForwardHops = 32

// client finds the browser's address: the peer, or, when the peer is a
// trusted proxy (or on a unix socket), the right-most X-Forwarded-For entry
// that is not a trusted proxy.
func (s *Server) client(r *http.Request) (client, error) {
	// A peer on a unix socket (totp.listen unix:/path) has no address:
	// it is the proxy, as only local processes allowed by the socket's
	// mode can connect.
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		peer := ap.Addr().Unmap()
		if !s.trusted(peer) {
			return client{addr: peer, https: r.TLS != nil}, nil
		}
	}
	c := client{https: r.TLS != nil || strings.EqualFold(lastValue(r.Header.Values("X-Forwarded-Proto")), "https")}
	var hops []string
	for _, v := range r.Header.Values("X-Forwarded-For") {
		hops = append(hops, strings.Split(v, ",")...)
	}
	if len(hops) == 0 {
		return c, errors.New("no X-Forwarded-For from a trusted proxy")
	}
	if len(hops) > maxForwardHops {
		hops = hops[len(hops)-maxForwardHops:]
	}
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := parseHop(hops[i])
		if err != nil {
			return c, err
		}
		c.addr = a
		if !s.trusted(a) {
			break
		}
	}
	return c, nil
}

// parseHop reads one X-Forwarded-For entry: an address, possibly with a
// port or in brackets.
func parseHop(h string) (netip.Addr, error) {
	h = strings.TrimSpace(h)
	if a, err := netip.ParseAddr(h); err == nil {
		return a.Unmap(), nil
	}
	if host, _, err := net.SplitHostPort(h); err == nil {
		if a, err := netip.ParseAddr(host); err == nil {
			return a.Unmap(), nil
		}
	}
	if a, err := netip.ParseAddr(strings.Trim(h, "[]")); err == nil {
		return a.Unmap(), nil
	}
	return netip.Addr{}, errors.New("X-Forwarded-For entry is not an address")
}

func (s *Server) trusted(a netip.Addr) bool {
	for _, p := range s.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func lastValue(vs []string) string {
	if len(vs) == 0 {
		return ""
	}
	parts := strings.Split(vs[len(vs)-1], ",")
	return strings.TrimSpace(parts[len(parts)-1])
}
