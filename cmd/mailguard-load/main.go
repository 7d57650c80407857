// Command mailguard-load measures a running mailguard front end from the
// same machine. It opens -conns persistent connections to the Postfix policy
// service, sends realistic requests (a request recorded from Postfix 3.7,
// with client addresses from the documentation ranges), and prints
// throughput, latency percentiles and the answers counted.
//
//	mailguard-load -policy 127.0.0.1:10028 -conns 32 -duration 10s -clients 500
//
// With -dovecot it drives the Dovecot auth policy API instead, over -conns
// keep-alive HTTP connections, with requests shaped like Dovecot 2.3's: a
// fraction -fail-ratio of them are failed-login reports from a few attacking
// clients, the rest allows (see dovecotLoad for the exact mix).
//
//	mailguard-load -dovecot http://127.0.0.1:10029/ -conns 32 -duration 10s -fail-ratio 0.2
//
// With -api it drives the HTTP API's GET /v1/check as nginx's auth_request
// does, over -conns keep-alive connections, the client address from
// -clients in ?ip= and the token in -api-header:
//
//	mailguard-load -api http://127.0.0.1:10031/ -api-header "Authorization: Bearer TOKEN" -conns 32 -duration 10s
//
// `mailguard-load floor` is the other side: a server of both protocols that
// does the least possible (reads each request, answers DUNNO or
// {"status":0}), the floor that `make load` compares mailguard with.
//
//	mailguard-load floor -policy 127.0.0.1:20028 -dovecot 127.0.0.1:20029
//
// It only talks to loopback addresses and unix sockets, and every run is
// bounded in time (and, with -requests, in count). Note that requests reach
// the real guard: with -users the recipients count in the postfix-rate jail,
// and a client address banned there will be refused; in -dovecot mode the
// attackers' failures count in the dovecot jails and get them banned.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"slices"
	"strings"
	"time"
)

const (
	maxDuration = 5 * time.Minute
	maxRequests = 10_000_000
	maxConns    = 1024
	maxClients  = 1_000_000
	maxRate     = 1_000_000
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && args[0] == "floor" {
		return runFloor(ctx, args[1:], stdout, stderr)
	}
	fs := flag.NewFlagSet("mailguard-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	policy := fs.String("policy", "127.0.0.1:10028", "Postfix policy service: host:port, inet:host:port or unix:/path (loopback only)")
	conns := fs.Int("conns", 32, fmt.Sprintf("persistent connections (at most %d)", maxConns))
	requests := fs.Int("requests", 0, fmt.Sprintf("stop after this many requests (at most %d); 0: run for -duration", maxRequests))
	duration := fs.Duration("duration", 10*time.Second, fmt.Sprintf("stop after this long (at most %v); with -requests, the default is the cap", maxDuration))
	rate := fs.Float64("rate", 0, fmt.Sprintf("requests per second over all connections, open loop: latency counts from when each request was due (at most %d); 0: as fast as answered", maxRate))
	clients := fs.Int("clients", 256, "distinct client addresses (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, then 2001:db8::/32)")
	users := fs.Int("users", 0, "distinct SASL users sending at RCPT (counted by the rate-limit jail); 0: unauthenticated, as recorded.\nWith -dovecot: distinct logins (default 1000)")
	dovecot := fs.String("dovecot", "", "Dovecot auth policy URL, http://HOST:PORT/ or unix:/path (loopback only): drive it instead of -policy")
	apiHeader := fs.String("api-header", "", "with -dovecot: auth_policy_server_api_header, sent verbatim, e.g. \"Authorization: Bearer KEY\"; with -api: the token's header line")
	apiURL := fs.String("api", "", "mailguard's HTTP API, http://HOST:PORT/ (loopback only): drive GET /v1/check instead of -policy")
	failRatio := fs.Float64("fail-ratio", 0.2, "with -dovecot: fraction of requests that are failed-login reports, 0..0.5 (the rest are allows)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	durationSet := set["duration"]
	if *dovecot != "" && !set["users"] {
		*users = 1000
	}
	if *requests > 0 && !durationSet {
		*duration = maxDuration
	}
	var errs []string
	check := func(ok bool, msg string) {
		if !ok {
			errs = append(errs, msg)
		}
	}
	check(fs.NArg() == 0, "unexpected arguments: "+strings.Join(fs.Args(), " "))
	check(*conns >= 1 && *conns <= maxConns, fmt.Sprintf("-conns must be 1..%d", maxConns))
	check(*requests >= 0 && *requests <= maxRequests, fmt.Sprintf("-requests must be 0..%d", maxRequests))
	check(*duration > 0 && *duration <= maxDuration, fmt.Sprintf("-duration must be more than 0 and at most %v", maxDuration))
	check(*rate >= 0 && *rate <= maxRate, fmt.Sprintf("-rate must be 0..%d", maxRate))
	check(*clients >= 1 && *clients <= maxClients, fmt.Sprintf("-clients must be 1..%d", maxClients))
	check(*users >= 0 && *users <= maxClients, fmt.Sprintf("-users must be 0..%d", maxClients))
	switch {
	case *apiURL != "":
		check(*dovecot == "" && !set["policy"], "give one of -policy, -dovecot or -api")
		check(!set["fail-ratio"] && !set["users"], "-fail-ratio and -users need -dovecot or -policy")
		check(!strings.ContainsAny(*apiHeader, "\r\n"), "-api-header must be one line")
	case *dovecot == "":
		for _, f := range []string{"api-header", "fail-ratio"} {
			check(!set[f], "-"+f+" needs -dovecot or -api")
		}
	default:
		check(!set["policy"], "give -policy or -dovecot, not both")
		check(*users >= 1, "-users must be at least 1 with -dovecot")
		check(*failRatio >= 0 && *failRatio <= 0.5, "-fail-ratio must be 0..0.5")
		check(!strings.ContainsAny(*apiHeader, "\r\n"), "-api-header must be one line")
	}
	var (
		network, addr, path string
		err                 error
	)
	switch {
	case *apiURL != "":
		network, addr, err = parseAPIURL(ctx, *apiURL)
	case *dovecot == "":
		network, addr, err = loopbackTarget(ctx, "-policy", *policy)
	default:
		network, addr, path, err = parseDovecotURL(ctx, *dovecot)
	}
	if err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		fmt.Fprintln(stderr, "mailguard-load: "+strings.Join(errs, "\nmailguard-load: "))
		return 2
	}

	r := &runner{conns: *conns, requests: *requests, duration: *duration, rate: *rate}
	var res *result
	pace := ""
	if *rate > 0 {
		pace = fmt.Sprintf(", open loop at %.0f req/s", *rate)
	}
	switch {
	case *apiURL != "":
		load := newAPILoad(network, addr, *apiHeader, *clients)
		r.open = load.open
		res = r.run(ctx)
		report(stdout, fmt.Sprintf("%s %s (api GET /v1/check)%s", network, addr, pace), *conns, res)
		fmt.Fprintf(stdout, "mix         %d client addresses; %d connections opened\n", len(load.clients), load.dials.Load())
	case *dovecot == "":
		load, err := newPostfixLoad(network, addr, *clients, *users)
		if err != nil {
			fmt.Fprintln(stderr, "mailguard-load:", err)
			return 1
		}
		r.open = load.open
		res = r.run(ctx)
		report(stdout, fmt.Sprintf("%s %s (postfix policy)%s", network, addr, pace), *conns, res)
	default:
		load := newDovecotLoad(network, addr, path, *apiHeader, *failRatio, *clients, *users)
		r.open = load.open
		res = r.run(ctx)
		report(stdout, fmt.Sprintf("%s %s (dovecot auth policy)%s", network, load.url, pace), *conns, res)
		fmt.Fprintf(stdout, "mix         %.0f%% failed reports from %d of %d clients, %d logins; %d connections opened\n",
			*failRatio*100, len(load.attackers), *clients, *users, load.dials.Load())
	}
	if res.firstErr != nil {
		fmt.Fprintf(stderr, "mailguard-load: %d errors, first: %v\n", res.errs, res.firstErr)
		return 1
	}
	return 0
}

// loopbackTarget checks that addr names this machine: a unix socket, or a
// loopback IP (or "localhost", resolved, every address loopback). It returns
// what to dial, resolved, so the dial cannot go anywhere else.
// name is the flag named in errors.
func loopbackTarget(ctx context.Context, name, addr string) (network, address string, err error) {
	if path, ok := strings.CutPrefix(addr, "unix:"); ok {
		if path == "" {
			return "", "", errors.New(name + " unix: needs a socket path")
		}
		return "unix", path, nil
	}
	host, port, err := net.SplitHostPort(strings.TrimPrefix(addr, "inet:"))
	if err != nil {
		return "", "", fmt.Errorf("%s %q: %w", name, addr, err)
	}
	var ips []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		ips = []netip.Addr{ip}
	} else if host == "localhost" {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return "", "", fmt.Errorf("%s %q: %w", name, addr, err)
		}
	} else {
		return "", "", fmt.Errorf("%s %q: give a loopback IP address, localhost or unix:/path", name, addr)
	}
	if len(ips) == 0 || slices.ContainsFunc(ips, func(ip netip.Addr) bool { return !ip.Unmap().IsLoopback() }) {
		return "", "", fmt.Errorf("%s %q: refusing a target that is not loopback", name, addr)
	}
	return "tcp", net.JoinHostPort(ips[0].Unmap().String(), port), nil
}

func report(w io.Writer, target string, conns int, res *result) {
	secs := res.elapsed.Seconds()
	fmt.Fprintf(w, "target      %s, %d connections\n", target, conns)
	fmt.Fprintf(w, "requests    %d answered in %.2fs, %d errors\n", res.sent, secs, res.errs)
	if secs > 0 {
		fmt.Fprintf(w, "throughput  %.0f req/s\n", float64(res.sent)/secs)
	}
	h := &res.lat
	fmt.Fprintf(w, "latency     p50 %v  p90 %v  p99 %v  max %v\n",
		round(h.quantile(0.5)), round(h.quantile(0.9)), round(h.quantile(0.99)), round(h.max))
	var labels []string
	for l, n := range res.labels {
		labels = append(labels, fmt.Sprintf("%s %d", l, n))
	}
	slices.Sort(labels)
	fmt.Fprintf(w, "answers     %s\n", strings.Join(labels, ", "))
}

func round(d time.Duration) time.Duration {
	if d > time.Millisecond {
		return d.Round(10 * time.Microsecond)
	}
	return d.Round(time.Microsecond)
}
