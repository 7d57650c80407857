package firewall

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// ipsetProg runs the ipset program (ipsetter), each call under the caller's
// context.
type ipsetProg struct{ path string }

func (p ipsetProg) run(ctx context.Context, stdin []byte, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, p.path, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ipset %s: %w: %s", args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func (p ipsetProg) names(ctx context.Context) ([]string, error) {
	out, err := p.run(ctx, nil, "list", "-n")
	if err != nil {
		return nil, err
	}
	var names []string
	for _, n := range strings.Fields(string(out)) {
		if isOurSet(n) {
			names = append(names, n)
		}
	}
	return names, nil
}

func (p ipsetProg) save(ctx context.Context) (map[string][]member, error) {
	out, err := p.run(ctx, nil, "save")
	if err != nil {
		return nil, err
	}
	return parseSave(string(out)), nil
}

func (p ipsetProg) create(ctx context.Context, name string, v6 bool) error {
	fam := "inet"
	if v6 {
		fam = "inet6"
	}
	_, err := p.run(ctx, nil, "create", name, "hash:net", "family", fam, "timeout", "0",
		"maxelem", strconv.Itoa(ipsetMax), "-exist")
	return err
}

func (p ipsetProg) restore(ctx context.Context, ops []setOp) error {
	var script bytes.Buffer
	for _, o := range ops {
		script.WriteString(o.String())
		script.WriteByte('\n')
	}
	_, err := p.run(ctx, script.Bytes(), "restore", "-exist")
	return err
}

func (p ipsetProg) destroy(ctx context.Context, name string) error {
	_, err := p.run(ctx, nil, "destroy", name)
	return err
}

// parseSave reads the output of `ipset save`: our sets and their members,
// with the timeout each has left. Lines of other sets, and lines it cannot
// read, are skipped.
func parseSave(out string) map[string][]member {
	sets := map[string][]member{}
	for l := range strings.Lines(out) {
		f := strings.Fields(l)
		if len(f) < 2 || !isOurSet(f[1]) {
			continue
		}
		switch f[0] {
		case "create":
			if _, ok := sets[f[1]]; !ok {
				sets[f[1]] = nil
			}
		case "add":
			if len(f) < 3 {
				continue
			}
			p, err := netip.ParsePrefix(f[2])
			if err != nil {
				a, err := netip.ParseAddr(f[2])
				if err != nil {
					continue
				}
				p = netip.PrefixFrom(a, a.BitLen())
			}
			m := member{prefix: p}
			for i := 3; i+1 < len(f); i++ {
				if f[i] == "timeout" {
					if s, err := strconv.Atoi(f[i+1]); err == nil && s > 0 {
						m.timeout = time.Duration(s) * time.Second
					}
				}
			}
			sets[f[1]] = append(sets[f[1]], m)
		}
	}
	return sets
}
