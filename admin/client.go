package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Client talks to a daemon's admin socket.
type Client struct {
	Socket string
}

// UnreachableError means no daemon answered on the socket.
type UnreachableError struct {
	Socket string
	Err    error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach mailguard at %s: %v (is `mailguard serve` running? --socket or MAILGUARD_ADMIN_SOCKET name another socket)", e.Socket, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// APIError is an error answer of the daemon: a refusal (Code CodeIgnored,
// CodeNotFound, CodeInvalid) or a failure of its store (CodeUnavailable).
type APIError struct {
	Code    string
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	// Talk only to a socket no other user can have put there.
	if err := checkSocket(c.Socket); err != nil {
		return err
	}
	hc := &http.Client{
		Timeout: 15 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", c.Socket)
		}},
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://mailguard"+path, rd)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return &UnreachableError{Socket: c.Socket, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e errorReply
		if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
			return fmt.Errorf("admin: %s", resp.Status)
		}
		return &APIError{Code: e.Code, Message: e.Error}
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Status returns every jail, or only jail if not empty.
func (c *Client) Status(ctx context.Context, jail string) ([]JailStatus, error) {
	var out []JailStatus
	p := "/status"
	if jail != "" {
		p += "?jail=" + url.QueryEscape(jail)
	}
	return out, c.do(ctx, http.MethodGet, p, nil, &out)
}

// Ban bans target in jail ("" = manual) for d (0 = the jail's bantime).
func (c *Client) Ban(ctx context.Context, target, jail string, d time.Duration) (Ban, error) {
	var out Ban
	req := banRequest{Target: target, Jail: jail}
	if d > 0 {
		req.For = d.String()
	}
	return out, c.do(ctx, http.MethodPost, "/ban", req, &out)
}

// Unban lifts every ban on target, on every node.
func (c *Client) Unban(ctx context.Context, target string) ([]Ban, error) {
	var out []Ban
	return out, c.do(ctx, http.MethodPost, "/unban", banRequest{Target: target}, &out)
}
