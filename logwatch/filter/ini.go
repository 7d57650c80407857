package filter

import (
	"fmt"
	"path/filepath"
	"strings"
)

// maxIncludeDepth bounds [INCLUDES] chains (and so include cycles).
const maxIncludeDepth = 10

// maxInterpolationDepth is Python ConfigParser's MAX_INTERPOLATION_DEPTH.
const maxInterpolationDepth = 10

// maxFileSize bounds what one filter file may hold.
const maxFileSize = 1 << 20

// maxValueSize bounds an option's value after %(name)s and <tag>
// substitution: a few lines can otherwise grow it exponentially.
const maxValueSize = 1 << 20

// config is a set of INI files read as fail2ban reads them: Python
// ConfigParser semantics plus fail2ban's [INCLUDES] and KNOWN/ sections.
// Option names are lower-cased (ConfigParser's optionxform); section names
// keep their case.
type config struct {
	defaults map[string]string
	sections map[string]map[string]string
}

// readFunc reads a file by name; names are joined with filepath rules.
type readFunc func(name string) ([]byte, error)

// parseINI reads one file's text into sections. It does not follow
// includes.
func parseINI(name string, data []byte) (*config, error) {
	c := &config{defaults: map[string]string{}, sections: map[string]map[string]string{}}
	var (
		cur      map[string]string
		optName  string
		optLines []string
		optInd   int
	)
	flush := func() {
		if optName == "" {
			return
		}
		for len(optLines) > 0 && optLines[len(optLines)-1] == "" {
			optLines = optLines[:len(optLines)-1]
		}
		cur[optName] = strings.Join(optLines, "\n")
		optName, optLines = "", nil
	}
	lines := strings.Split(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n")
	for i, raw := range lines {
		lineNo := i + 1
		line := stripInlineComment(raw)
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(strings.TrimSpace(raw), "#") || strings.HasPrefix(strings.TrimSpace(raw), ";") {
			continue // a whole-line comment, even inside a value
		}
		if trimmed == "" {
			if optName != "" {
				optLines = append(optLines, "")
			}
			continue
		}
		indent := len(line) - len(strings.TrimLeft(line, " \t"))
		if optName != "" && indent > optInd {
			optLines = append(optLines, trimmed)
			continue
		}
		flush()
		if strings.HasPrefix(trimmed, "[") {
			end := strings.Index(trimmed, "]")
			if end < 0 {
				return nil, fmt.Errorf("%s:%d: section header without ]", name, lineNo)
			}
			sec := trimmed[1:end]
			if sec == "DEFAULT" {
				cur = c.defaults
			} else {
				if c.sections[sec] != nil {
					return nil, fmt.Errorf("%s:%d: section [%s] twice", name, lineNo, sec)
				}
				cur = map[string]string{}
				c.sections[sec] = cur
			}
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("%s:%d: option before the first [section]", name, lineNo)
		}
		d := strings.IndexAny(trimmed, "=:")
		if d <= 0 {
			return nil, fmt.Errorf("%s:%d: not a section, an option or a comment: %q", name, lineNo, trimmed)
		}
		key := strings.ToLower(strings.TrimSpace(trimmed[:d]))
		if _, dup := cur[key]; dup {
			return nil, fmt.Errorf("%s:%d: option %q twice in one section", name, lineNo, key)
		}
		optName, optInd = key, indent
		optLines = []string{strings.TrimSpace(trimmed[d+1:])}
		cur[key] = "" // marks it set for the duplicate check
	}
	flush()
	return c, nil
}

// stripInlineComment removes a ';' comment preceded by white space, as
// fail2ban's inline_comment_prefixes=";" does.
func stripInlineComment(line string) string {
	for i := 1; i < len(line); i++ {
		if line[i] == ';' && (line[i-1] == ' ' || line[i-1] == '\t') {
			return line[:i]
		}
	}
	return line
}

// load reads name with its [INCLUDES] before/after files (resolved relative
// to the including file, missing ones skipped as ConfigParser does) and its
// .local companion, merged in fail2ban's order: later files override
// earlier ones, and an overridden option stays reachable as
// %(known/option)s.
func load(read readFunc, name string) (*config, error) {
	var files []string
	if err := collectIncludes(read, name, true, 0, map[string]bool{}, &files); err != nil {
		return nil, err
	}
	merged := &config{defaults: map[string]string{}, sections: map[string]map[string]string{}}
	for _, f := range files {
		data, err := read(f)
		if err != nil {
			return nil, fmt.Errorf("filter: %w", err)
		}
		c, err := parseINI(f, data)
		if err != nil {
			return nil, fmt.Errorf("filter: %w", err)
		}
		for k, v := range c.defaults {
			merged.defaults[k] = v
		}
		for sec, opts := range c.sections {
			if sec == "INCLUDES" {
				continue
			}
			old := merged.sections[sec]
			if old == nil {
				old = map[string]string{}
				merged.sections[sec] = old
			}
			known := merged.sections["KNOWN/"+sec]
			for k, v := range opts {
				if prev, ok := old[k]; ok {
					if known == nil {
						known = map[string]string{}
						merged.sections["KNOWN/"+sec] = known
					}
					known[k] = prev
				}
				old[k] = v
			}
		}
	}
	return merged, nil
}

func collectIncludes(read readFunc, name string, required bool, depth int, seen map[string]bool, out *[]string) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("filter: %s: includes nested deeper than %d", name, maxIncludeDepth)
	}
	if seen[name] {
		return fmt.Errorf("filter: %s: includes itself", name)
	}
	data, err := read(name)
	if err != nil {
		if required {
			return fmt.Errorf("filter: %w", err)
		}
		return nil // a missing include (common.local) is skipped, as ConfigParser does
	}
	if len(data) > maxFileSize {
		return fmt.Errorf("filter: %s: larger than %d bytes", name, maxFileSize)
	}
	c, err := parseINI(name, data)
	if err != nil {
		return fmt.Errorf("filter: %w", err)
	}
	seen[name] = true
	defer delete(seen, name)
	inc := c.sections["INCLUDES"]
	dir := filepath.Dir(name)
	for _, b := range strings.Fields(inc["before"]) {
		if err := collectIncludes(read, filepath.Join(dir, b), false, depth+1, seen, out); err != nil {
			return err
		}
	}
	*out = append(*out, name)
	for _, a := range strings.Fields(inc["after"]) {
		if err := collectIncludes(read, filepath.Join(dir, a), false, depth+1, seen, out); err != nil {
			return err
		}
	}
	if local := strings.TrimSuffix(name, ".conf") + ".local"; local != name && strings.HasSuffix(name, ".conf") {
		return collectIncludes(read, local, false, depth+1, seen, out)
	}
	return nil
}

// get returns option opt of section sec (DEFAULT as fallback), with
// %(name)s, %(section/name)s and %(known/name)s interpolated.
func (c *config) get(sec, opt string, vars map[string]string) (string, bool, error) {
	raw, ok := c.raw(sec, opt, vars)
	if !ok {
		return "", false, nil
	}
	v, err := c.interpolate(sec, opt, raw, vars, 1)
	return v, true, err
}

func (c *config) raw(sec, opt string, vars map[string]string) (string, bool) {
	if v, ok := vars[opt]; ok {
		return v, true
	}
	if s := c.sections[sec]; s != nil {
		if v, ok := s[opt]; ok {
			return v, true
		}
	}
	v, ok := c.defaults[opt]
	return v, ok
}

// interpolate is ConfigParser's BasicInterpolation with fail2ban's
// section/option extension.
func (c *config) interpolate(sec, opt, rest string, vars map[string]string, depth int) (string, error) {
	if depth > maxInterpolationDepth {
		return "", fmt.Errorf("filter: [%s] %s: %%(...)s interpolation deeper than %d (a loop?)", sec, opt, maxInterpolationDepth)
	}
	var b strings.Builder
	for {
		p := strings.IndexByte(rest, '%')
		if p < 0 {
			b.WriteString(rest)
			return b.String(), nil
		}
		b.WriteString(rest[:p])
		rest = rest[p:]
		switch {
		case strings.HasPrefix(rest, "%%"):
			b.WriteByte('%')
			rest = rest[2:]
		case strings.HasPrefix(rest, "%("):
			end := strings.Index(rest, ")s")
			if end < 0 {
				return "", fmt.Errorf("filter: [%s] %s: bad interpolation syntax in %q", sec, opt, rest)
			}
			name := strings.ToLower(rest[2:end])
			rest = rest[end+2:]
			v, vsec, err := c.lookup(sec, name, vars)
			if err != nil {
				return "", fmt.Errorf("filter: [%s] %s: %w", sec, opt, err)
			}
			v, err = c.interpolate(vsec, name, v, vars, depth+1)
			if err != nil {
				return "", err
			}
			if b.Len()+len(v) > maxValueSize {
				return "", fmt.Errorf("filter: [%s] %s: larger than %d bytes after interpolation", sec, opt, maxValueSize)
			}
			b.WriteString(v)
		default:
			return "", fmt.Errorf("filter: [%s] %s: '%%' must be followed by '%%' or '(' in %q", sec, opt, rest)
		}
	}
}

// lookup finds the raw value an interpolation names, and the section its
// own references resolve in.
func (c *config) lookup(sec, name string, vars map[string]string) (string, string, error) {
	if s, o, ok := strings.Cut(name, "/"); ok {
		switch strings.ToLower(s) {
		case "known":
			if v, ok := c.sections["KNOWN/"+sec][o]; ok {
				return v, sec, nil
			}
			if v, ok := c.defaults[o]; ok {
				return v, sec, nil
			}
		case "default":
			if v, ok := c.defaults[o]; ok {
				return v, sec, nil
			}
		default:
			// Section names keep their case; the option part was
			// lower-cased with the whole name, as fail2ban does.
			for sn, opts := range c.sections {
				if strings.EqualFold(sn, s) {
					if v, ok := opts[o]; ok {
						return v, sn, nil
					}
				}
			}
			if v, ok := c.defaults[o]; ok {
				return v, sec, nil
			}
		}
		return "", "", fmt.Errorf("no option %q to interpolate", name)
	}
	v, ok := c.raw(sec, name, vars)
	if !ok {
		return "", "", fmt.Errorf("no option %q to interpolate", name)
	}
	return v, sec, nil
}
