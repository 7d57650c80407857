package config

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/viper"
)

// keySpec is one config key: its pattern ("*" stands for a map key, a jail
// name), its Go type and its secret tag.
type keySpec struct {
	pattern string
	typ     reflect.Type
	secret  string // "": not a secret; else how Masked masks it
}

// keys lists every key of Config.
var keys = keySpecs(reflect.TypeOf(Config{}), "")

func keySpecs(t reflect.Type, prefix string) []keySpec {
	var out []keySpec
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("mapstructure")
		switch {
		case f.Type.Kind() == reflect.Struct:
			out = append(out, keySpecs(f.Type, key+".")...)
		case f.Type.Kind() == reflect.Map:
			out = append(out, keySpecs(f.Type.Elem(), key+".*.")...)
		default:
			out = append(out, keySpec{pattern: key, typ: f.Type, secret: f.Tag.Get("secret")})
		}
	}
	return out
}

// lookup finds the spec of a key as written (jails.dovecot.bantime).
func lookup(key string) (keySpec, bool) {
	parts := strings.Split(key, ".")
next:
	for _, k := range keys {
		kp := strings.Split(k.pattern, ".")
		if len(kp) != len(parts) {
			continue
		}
		for i := range kp {
			if kp[i] != "*" && kp[i] != parts[i] {
				continue next
			}
		}
		return k, true
	}
	return keySpec{}, false
}

// setDefaults gives viper every key of val (a Config) as a default, so that
// the environment can override any of them.
func setDefaults(v *viper.Viper, prefix string, val reflect.Value) {
	t := val.Type()
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("mapstructure")
		fv := val.Field(i)
		switch {
		case f.Type.Kind() == reflect.Struct:
			setDefaults(v, key+".", fv)
		case f.Type.Kind() == reflect.Map:
			iter := fv.MapRange()
			for iter.Next() {
				setDefaults(v, key+"."+iter.Key().String()+".", iter.Value())
			}
		case f.Type == durationType:
			v.SetDefault(key, fv.Interface().(Duration).String())
		default:
			v.SetDefault(key, fv.Interface())
		}
	}
}

var durationType = reflect.TypeOf(Duration(0))

func durationHook(from, to reflect.Type, data any) (any, error) {
	if to != durationType {
		return data, nil
	}
	switch x := data.(type) {
	case string:
		return ParseDuration(x)
	case int:
		return ParseDuration(strconv.Itoa(x))
	case int64:
		return ParseDuration(strconv.FormatInt(x, 10))
	case float64:
		if x != float64(int64(x)) {
			return nil, fmt.Errorf("invalid duration %v: seconds must be whole", x)
		}
		return ParseDuration(strconv.FormatInt(int64(x), 10))
	case Duration:
		return x, nil
	case time.Duration:
		return Duration(x), nil
	}
	return nil, fmt.Errorf("invalid duration %v", data)
}

// intHook refuses a fraction where a whole number is wanted (mapstructure
// would truncate 1.5 to 1).
func intHook(from, to reflect.Type, data any) (any, error) {
	if to.Kind() != reflect.Int {
		return data, nil
	}
	if x, ok := data.(float64); ok && x != float64(int64(x)) {
		return nil, &mapstructure.ParseError{Expected: reflect.New(to).Elem(), Value: data, Err: errors.New("not whole")}
	}
	return data, nil
}

var logsType = reflect.TypeOf([]LogSource(nil))

// logsHook checks the entries of jails.NAME.logs before they are decoded:
// mapstructure would drop a misspelt key silently. A string (from --set
// or the environment) can only be empty: no logs.
func logsHook(from, to reflect.Type, data any) (any, error) {
	if to != logsType {
		return data, nil
	}
	switch x := data.(type) {
	case string:
		if strings.TrimSpace(x) == "" {
			return []LogSource{}, nil
		}
		return nil, errors.New("must be a list of {path or journal, filter, mode} entries, written in the config file (an empty value turns the logs off)")
	case []any:
		known := []string{"path", "journal", "filter", "mode"}
		for i, e := range x {
			m, ok := e.(map[string]any)
			if !ok {
				return nil, fmt.Errorf("entry %d: must be a mapping of %s, not %v", i+1, strings.Join(known, ", "), e)
			}
			for _, k := range slices.Sorted(maps.Keys(m)) {
				if !slices.Contains(known, k) {
					return nil, fmt.Errorf("entry %d: unknown key %q (%s)", i+1, k, strings.Join(known, ", "))
				}
			}
		}
	}
	return data, nil
}

// listHook lets an environment variable or --set give a list as
// "a,b c": commas and spaces separate.
func listHook(from, to reflect.Type, data any) (any, error) {
	if from.Kind() != reflect.String || to.Kind() != reflect.Slice {
		return data, nil
	}
	return strings.FieldsFunc(data.(string), func(r rune) bool { return r == ',' || r == ' ' }), nil
}

// decodeErrors turns mapstructure's error tree (errors.Join of
// *mapstructure.DecodeError, nested by struct and map) into one KeyError per
// field, sorted by key.
func decodeErrors(err error) Errors {
	var out Errors
	var walk func(error)
	walk = func(err error) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var de *mapstructure.DecodeError
		if !errors.As(err, &de) {
			out = append(out, err)
			return
		}
		inner := de.Unwrap()
		var nested *mapstructure.DecodeError
		if errors.As(inner, &nested) {
			walk(inner) // a struct or map whose fields failed
			return
		}
		key := fieldKey(de.Name())
		out = append(out, &KeyError{Key: key, Msg: fieldMessage(key, inner)})
	}
	walk(err)
	slices.SortStableFunc(out, func(a, b error) int { return strings.Compare(a.Error(), b.Error()) })
	return out
}

// fieldKey turns mapstructure's field name (jails[dovecot].bantime) into the
// key as users write it (jails.dovecot.bantime).
func fieldKey(name string) string {
	return strings.NewReplacer("[", ".", "]", "").Replace(name)
}

// fieldMessage says what is wrong with a value, showing it unless the key
// is secret.
func fieldMessage(key string, err error) string {
	spec, _ := lookup(key)
	var pe *mapstructure.ParseError
	var ue *mapstructure.UnconvertibleTypeError
	var want reflect.Type
	var value any
	switch {
	case errors.As(err, &pe):
		want, value = pe.Expected.Type(), pe.Value
	case errors.As(err, &ue):
		want, value = ue.Expected.Type(), ue.Value
	default:
		if spec.secret != "" {
			return "invalid value (not shown: the key is secret)"
		}
		return err.Error() // our hooks' own messages
	}
	if spec.secret != "" {
		return "must be " + typeName(want) + " (value not shown: the key is secret)"
	}
	if s, ok := value.(string); ok {
		return fmt.Sprintf("must be %s, not %q", typeName(want), s)
	}
	return fmt.Sprintf("must be %s, not %v", typeName(want), value)
}

func typeName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "a whole number"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number, 0 or more"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping of keys"
	}
	return t.String()
}
