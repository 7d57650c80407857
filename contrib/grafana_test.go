package contrib

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/mailguard/mailguard/metrics"
)

// Every PromQL expression of the Grafana dashboard (panels and variables)
// parses, and every metric it names is one the daemon exports: scraped from
// the metrics package's real /metrics handler after every counter, gauge
// and histogram of its Registry has been touched (found by reflection, so a
// metric added there is covered without editing this test).
func TestGrafanaDashboard(t *testing.T) {
	b, err := os.ReadFile("grafana/mailguard.json")
	if err != nil {
		t.Fatal(err)
	}
	var d any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/mailguard.json: %v", err)
	}
	var exprs []string
	walk(d, "", &exprs)
	if len(exprs) < 10 {
		t.Fatalf("found %d expressions, want the dashboard's panels", len(exprs))
	}
	exported := exportedMetrics(t)
	used := map[string]bool{}
	for _, e := range exprs {
		names, err := metricNames(e)
		if err != nil {
			t.Errorf("expression %q: %v", e, err)
			continue
		}
		if len(names) == 0 {
			t.Errorf("expression %q names no metric", e)
		}
		for _, n := range names {
			used[n] = true
			if !exported[n] {
				t.Errorf("expression %q names %s, which the daemon does not export", e, n)
			}
		}
	}
	// What the issue asks the picture to show.
	for _, n := range []string{"mailguard_requests_total", "mailguard_decision_seconds_bucket", "mailguard_failures_total",
		"mailguard_bans_active", "mailguard_store_errors_total", "mailguard_firewall_errors_total", "mailguard_bans_held"} {
		if !used[n] {
			t.Errorf("the dashboard does not show %s", n)
		}
	}
}

// The provisioning files are Grafana's dashboard providers (apiVersion 1,
// a file provider with a path), strictly decoded.
func TestGrafanaProvisioning(t *testing.T) {
	files, err := filepath.Glob("grafana/provisioning/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no provisioning file (%v)", err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			APIVersion int `yaml:"apiVersion"`
			Providers  []struct {
				Name, Folder, Type    string
				DisableDeletion       bool `yaml:"disableDeletion"`
				AllowUIUpdates        bool `yaml:"allowUiUpdates"`
				UpdateIntervalSeconds int  `yaml:"updateIntervalSeconds"`
				Options               struct {
					Path                      string
					FoldersFromFilesStructure bool `yaml:"foldersFromFilesStructure"`
				}
			}
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if p.APIVersion != 1 || len(p.Providers) != 1 || p.Providers[0].Type != "file" || !filepath.IsAbs(p.Providers[0].Options.Path) {
			t.Errorf("%s: %+v, want apiVersion 1 and one file provider with an absolute path", f, p)
		}
	}
}

// walk collects the PromQL of panels ("expr") and of query variables.
func walk(v any, key string, out *[]string) {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			walk(x, k, out)
		}
	case []any:
		for _, x := range v {
			walk(x, key, out)
		}
	case string:
		switch {
		case key == "expr":
			*out = append(*out, v)
		case (key == "query" || key == "definition") && strings.HasPrefix(v, "label_values("):
			// label_values(METRIC, label): Grafana's, the metric is PromQL.
			inner := strings.TrimSuffix(strings.TrimPrefix(v, "label_values("), ")")
			if i := strings.LastIndexByte(inner, ','); i >= 0 {
				inner = inner[:i]
			}
			*out = append(*out, strings.TrimSpace(inner))
		}
	}
}

// exportedMetrics scrapes a real metrics handler whose Registry has had
// every exported method called once.
func exportedMetrics(t *testing.T) map[string]bool {
	t.Helper()
	reg := metrics.New(func(context.Context) (map[string]int, error) { return map[string]int{"dovecot": 1}, nil })
	rv := reflect.ValueOf(reg)
	for i := range rv.NumMethod() {
		m := rv.Method(i)
		args := make([]reflect.Value, m.Type().NumIn())
		ok := true
		for j := range args {
			if args[j], ok = sample(m.Type().In(j)); !ok {
				break
			}
		}
		if ok && m.Type().NumOut() == 0 {
			m.Call(args)
		}
	}
	srv := httptest.NewServer((&metrics.Server{Registry: reg}).Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	names := map[string]bool{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		names[f[2]] = true
		switch f[3] {
		case "histogram":
			names[f[2]+"_bucket"], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
		case "summary":
			names[f[2]+"_sum"], names[f[2]+"_count"] = true, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(names) < 10 || !names["mailguard_requests_total"] {
		t.Fatalf("scraped %d metrics (%v): want the daemon's", len(names), slices.Sorted(mapsKeys(names)))
	}
	return names
}

func mapsKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// sample is an argument value for a method of the Registry.
func sample(t reflect.Type) (reflect.Value, bool) {
	if t == reflect.TypeFor[time.Duration]() {
		return reflect.ValueOf(time.Millisecond), true
	}
	switch t.Kind() {
	case reflect.String:
		return reflect.ValueOf("x").Convert(t), true
	case reflect.Int, reflect.Int64, reflect.Int32, reflect.Uint, reflect.Uint64, reflect.Float64:
		return reflect.ValueOf(1).Convert(t), true
	case reflect.Bool:
		return reflect.ValueOf(true).Convert(t), true
	case reflect.Func: // a value read at scrape time (WatchHeld, LogSourceUp): zeros
		return reflect.MakeFunc(t, func([]reflect.Value) []reflect.Value {
			out := make([]reflect.Value, t.NumOut())
			for i := range out {
				out[i] = reflect.Zero(t.Out(i))
			}
			return out
		}), true
	}
	return reflect.Value{}, false
}

// PromQL's words that are not metrics: functions and aggregations (before
// "("), keywords, and the label lists after by/without/on/ignoring.
var (
	keywords  = []string{"and", "or", "unless", "bool", "offset", "atan2"}
	labelList = []string{"by", "without", "on", "ignoring", "group_left", "group_right"}
	functions = []string{"sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
		"count_values", "group", "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile",
		"abs", "ceil", "floor", "round", "clamp", "clamp_min", "clamp_max", "label_replace", "label_join",
		"vector", "scalar", "time", "timestamp", "absent", "changes", "resets", "sort", "sort_desc",
		"avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time"}
)

// metricNames parses a PromQL expression far enough to name its metrics:
// it tokenizes it (strings, numbers, durations, identifiers, operators),
// checks that (), [] and {} balance, that every function is PromQL's, and
// returns the identifiers that select series.
func metricNames(e string) ([]string, error) {
	var names, stack []string
	isID := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	next := func(i int) byte { // next non-space byte from i
		for ; i < len(e); i++ {
			if e[i] != ' ' && e[i] != '\t' && e[i] != '\n' {
				return e[i]
			}
		}
		return 0
	}
	inLabels := false // inside a by (...) list
	for i := 0; i < len(e); {
		c := e[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n':
			i++
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for ; j < len(e) && e[j] != c; j++ {
				if e[j] == '\\' && c != '`' {
					j++
				}
			}
			if j >= len(e) {
				return nil, fmt.Errorf("unterminated string at %d", i)
			}
			if len(stack) == 0 || stack[len(stack)-1] != "{" {
				return nil, fmt.Errorf("string outside a label matcher at %d", i)
			}
			i = j + 1
		case c == '(' || c == '[' || c == '{':
			stack = append(stack, string(c))
			i++
		case c == ')' || c == ']' || c == '}':
			open := map[byte]string{')': "(", ']': "[", '}': "{"}[c]
			if len(stack) == 0 || stack[len(stack)-1] != open {
				return nil, fmt.Errorf("unbalanced %q at %d", c, i)
			}
			stack = stack[:len(stack)-1]
			if c == ')' {
				inLabels = false
			}
			i++
		case len(stack) > 0 && stack[len(stack)-1] == "[":
			i++ // a range or subquery: durations and Grafana's $__rate_interval
		case c == '$':
			return nil, fmt.Errorf("grafana variable outside a string or range at %d", i)
		case c >= '0' && c <= '9' || c == '.':
			for i < len(e) && (e[i] >= '0' && e[i] <= '9' || e[i] == '.' || e[i] == 'e') {
				i++
			}
		case isID(c, true):
			j := i
			for j < len(e) && isID(e[j], j == i) {
				j++
			}
			w := e[i:j]
			i = j
			inMatcher := len(stack) > 0 && stack[len(stack)-1] == "{"
			switch {
			case inMatcher || inLabels:
				// a label name
			case slices.Contains(labelList, w):
				if next(i) != '(' {
					return nil, fmt.Errorf("%s without a label list", w)
				}
				inLabels = true
			case next(i) == '(' || aggregated(e[i:]):
				if !slices.Contains(functions, w) {
					return nil, fmt.Errorf("unknown function %s", w)
				}
			case slices.Contains(keywords, w):
			default:
				names = append(names, w)
			}
		case strings.IndexByte("+-*/%^=!<>~,", c) >= 0:
			i++
		default:
			return nil, fmt.Errorf("unexpected %q at %d", c, i)
		}
	}
	if len(stack) > 0 {
		return nil, fmt.Errorf("unclosed %s", stack[len(stack)-1])
	}
	return names, nil
}

// aggregated: rest starts with a grouping clause, as after "sum" in
// "sum by (jail) (...)".
func aggregated(rest string) bool {
	rest = strings.TrimLeft(rest, " \t\n")
	for _, w := range []string{"by", "without"} {
		if r, ok := strings.CutPrefix(rest, w); ok && strings.HasPrefix(strings.TrimLeft(r, " \t\n"), "(") {
			return true
		}
	}
	return false
}

func TestMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
		err  string
	}{
		{`sum by (jail, protocol) (rate(mailguard_failures_total{instance=~"$instance"}[$__rate_interval]))`, []string{"mailguard_failures_total"}, ""},
		{`histogram_quantile(0.99, sum by (frontend, le) (rate(a_bucket[5m])))`, []string{"a_bucket"}, ""},
		{`sum(rate(x{v!~"allow|dunno"}[1m])) / sum(rate(y[1m]))`, []string{"x", "y"}, ""},
		{`rate(x[5m]`, nil, "unclosed ("},
		{`sum(x})`, nil, "unbalanced"},
		{`ratee(x[5m])`, nil, "unknown function ratee"},
		{`x{a="b}`, nil, "unterminated string"},
		{`summ by (a) (x)`, nil, "unknown function summ"},
	} {
		got, err := metricNames(tc.expr)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("metricNames(%q) error = %v, want %q", tc.expr, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %v, %v, want %v", tc.expr, got, err, tc.want)
		}
	}
}
