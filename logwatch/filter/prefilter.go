package filter

import (
	"regexp/syntax"
	"strings"
)

// A literal prefilter: the set of strings one of which every match of a
// regex must contain, found in its syntax tree. A line that holds none of
// them is a miss without running the regex, which is what most lines of
// a mail log are (connect, disconnect, delivery).

// minLit is the shortest literal worth a search.
const minLit = 3

// requiredLits returns the literals one of which every match of pattern
// contains, or nil when there is no useful set (or pattern does not parse
// as RE2 syntax).
func requiredLits(pattern string) []string {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil
	}
	lits := litSet(re.Simplify())
	if len(lits) == 0 || len(lits) > 16 {
		return nil
	}
	for _, l := range lits {
		if len(l) < minLit {
			return nil
		}
	}
	return lits
}

// withoutLookaround removes lookaround groups and backreferences from a
// regexp2 pattern: the result matches at least what the pattern does, so
// the literals it requires, the pattern requires too.
func withoutLookaround(p string) string {
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '\\' && i+1 < len(p):
			if p[i+1] == 'k' && i+2 < len(p) && p[i+2] == '<' {
				if j := strings.IndexByte(p[i:], '>'); j > 0 {
					i += j
					continue
				}
			}
			b.WriteString(p[i : i+2])
			i++
		case c == '[':
			j := classEnd(p, i)
			b.WriteString(p[i:j])
			i = j - 1
		case c == '(' && (strings.HasPrefix(p[i:], "(?=") || strings.HasPrefix(p[i:], "(?!") ||
			strings.HasPrefix(p[i:], "(?<=") || strings.HasPrefix(p[i:], "(?<!")):
			i = groupEnd(p, i) - 1
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// classEnd returns the index after the character class opening at i.
func classEnd(p string, i int) int {
	j := i + 1
	if j < len(p) && p[j] == '^' {
		j++
	}
	if j < len(p) && p[j] == ']' {
		j++
	}
	for ; j < len(p); j++ {
		switch p[j] {
		case '\\':
			j++
		case ']':
			return j + 1
		}
	}
	return len(p)
}

// groupEnd returns the index after the group opening at i.
func groupEnd(p string, i int) int {
	depth := 0
	for j := i; j < len(p); j++ {
		switch p[j] {
		case '\\':
			j++
		case '[':
			j = classEnd(p, j) - 1
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return j + 1
			}
		}
	}
	return len(p)
}

func litSet(re *syntax.Regexp) []string {
	switch re.Op {
	case syntax.OpLiteral:
		if re.Flags&syntax.FoldCase != 0 {
			return nil
		}
		return []string{string(re.Rune)}
	case syntax.OpCapture:
		return litSet(re.Sub[0])
	case syntax.OpPlus:
		return litSet(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return litSet(re.Sub[0])
		}
		return nil
	case syntax.OpAlternate:
		var all []string
		for _, s := range re.Sub {
			l := litSet(s)
			if l == nil {
				return nil
			}
			all = append(all, l...)
		}
		return all
	case syntax.OpConcat:
		var best []string
		for _, s := range re.Sub {
			if l := litSet(s); l != nil && better(l, best) {
				best = l
			}
		}
		return best
	}
	return nil
}

// better prefers the set whose shortest literal is longer, then the
// smaller set.
func better(a, b []string) bool {
	if b == nil {
		return true
	}
	ma, mb := minLen(a), minLen(b)
	if ma != mb {
		return ma > mb && (ma >= minLit || mb < minLit)
	}
	return len(a) < len(b)
}

func minLen(l []string) int {
	m := -1
	for _, s := range l {
		if m < 0 || len(s) < m {
			m = len(s)
		}
	}
	return m
}

// mayMatch reports whether s holds one of the literals (true without a
// prefilter).
func mayMatch(lits []string, s string) bool {
	if lits == nil {
		return true
	}
	for _, l := range lits {
		if strings.Contains(s, l) {
			return true
		}
	}
	return false
}
