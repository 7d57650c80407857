package filter

import (
	"embed"
	"io/fs"
	"path"
	"sort"
	"strings"
)

//go:embed filters/*.conf
var shipped embed.FS

// Shipped lists the names of the filters mailguard ships (common.conf,
// which they include, is not one).
func Shipped() []string {
	ents, _ := fs.ReadDir(shipped, "filters")
	var names []string
	for _, e := range ents {
		if n := strings.TrimSuffix(e.Name(), ".conf"); n != "common" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names
}

// LoadShipped loads a filter mailguard ships by name ("postfix").
func LoadShipped(name, mode string, opts map[string]string) (*Filter, error) {
	if strings.ContainsAny(name, `/\`) || name == "" {
		return nil, fs.ErrNotExist
	}
	read := func(n string) ([]byte, error) { return fs.ReadFile(shipped, path.Clean(n)) }
	return load2(read, path.Join("filters", name+".conf"), mode, opts)
}

// Open loads name as a shipped filter's name, or as the path of a filter
// file when it contains a slash or ends in .conf or .local.
func Open(name, mode string, opts map[string]string) (*Filter, error) {
	if strings.Contains(name, "/") || strings.HasSuffix(name, ".conf") || strings.HasSuffix(name, ".local") {
		return Load(name, mode, opts)
	}
	return LoadShipped(name, mode, opts)
}
