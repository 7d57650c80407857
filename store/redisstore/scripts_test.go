package redisstore

import (
	"regexp"
	"slices"
	"testing"
)

// lua prepends exactly the helpers a script uses, directly or through other
// helpers, in dependency order; a word that merely contains a helper's name
// does not pull it in.
func TestLuaHelpers(t *testing.T) {
	defined := regexp.MustCompile(`(?m)^local (?:function )?(\w+)`)
	names := func(src string) []string {
		var out []string
		for _, m := range defined.FindAllStringSubmatch(src, -1) {
			out = append(out, m[1])
		}
		return out
	}
	for _, c := range []struct {
		name, body string
		want       []string
	}{
		{"none", "return redis.call('GET', KEYS[1]) -- records: iffy, of, wliveness", nil},
		{"direct", "return wlive(ARGV[1], 0)", []string{"wlive"}},
		// records uses expof, NUL and isjail, all defined before it.
		{"through another", "return records(redis.call('HGETALL', KEYS[1]), 0)", []string{"expof", "NUL", "isjail", "records"}},
		// history uses NUL, b36 (with its B36) and extend, which uses f.
		{"deep", "return history(KEYS[1], 'j', 1, 1, 1, 1)", []string{"f", "B36", "b36", "extend", "NUL", "history"}},
	} {
		got := names(lua(c.body))
		want := append(slices.Clone(c.want), names(c.body)...)
		if !slices.Equal(got, want) {
			t.Errorf("%s: lua defines %q, want %q", c.name, got, want)
		}
	}
	// Each helper uses only helpers before it, so that lua's order works.
	for i, h := range luaHelpers {
		for _, later := range luaHelpers[i+1:] {
			if usesName(luaCode(h.src), later.name) {
				t.Errorf("helper %s uses %s, defined after it", h.name, later.name)
			}
		}
	}
	if got := names(checkScript.src); slices.Contains(got, "putban") || slices.Contains(got, "history") {
		t.Errorf("the check script defines %q: it bans nothing", got)
	}
}
