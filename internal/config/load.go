package config

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Overrides are command-line settings applied over the file. Zero fields are
// not set.
type Overrides struct {
	DataDir   string // --data-dir
	NodeID    uint64 // --node-id
	LogLevel  string // --log-level
	LogFormat string // --log-format
}

// apply sets the overridden fields of c and returns the flag of each key it
// set.
func (o Overrides) apply(c *Config) map[string]string {
	src := map[string]string{}
	if o.DataDir != "" {
		c.DataDir, src["data_dir"] = o.DataDir, "flag --data-dir"
	}
	if o.NodeID != 0 {
		c.NodeID, src["node_id"] = o.NodeID, "flag --node-id"
	}
	if o.LogLevel != "" {
		c.Log.Level, src["log.level"] = o.LogLevel, "flag --log-level"
	}
	if o.LogFormat != "" {
		c.Log.Format, src["log.format"] = o.LogFormat, "flag --log-format"
	}
	return src
}

// Load reads the TOML file at path over Default(), applies o and validates
// the result. With path "" it validates Default() with o applied. Every
// error is an *Error naming the file, the key and its line (joined when there
// are several); errors.Is(err, ErrInvalid) holds for all of them, including
// a file that cannot be read.
func Load(path string, o Overrides) (*Config, error) {
	c := Default()
	var idx *index
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return nil, &Error{File: path, Msg: fmt.Sprintf("cannot read config file: %v", errors.Unwrap(err))}
		}
		if c, idx, err = parse(path, data); err != nil {
			return nil, err
		}
	}
	src := o.apply(c)
	es := c.validate()
	for _, e := range es {
		e.File = path
		if s, ok := src[rootKey(e.Key)]; ok {
			e.Source = s
			continue
		}
		if idx != nil {
			e.Line, e.Column = idx.find(e.Key)
		}
	}
	// Report in the order of the file; defaults and flags last.
	sort.SliceStable(es, func(i, j int) bool {
		li, lj := es[i].Line, es[j].Line
		if li == 0 || lj == 0 {
			return li != 0 && lj == 0
		}
		return li < lj
	})
	if err := joinErrors(es); err != nil {
		return nil, err
	}
	return c, nil
}

// rootKey strips array indexes: meta_addrs[1] -> meta_addrs.
func rootKey(key string) string {
	if i := strings.IndexByte(key, '['); i >= 0 {
		return key[:i]
	}
	return key
}

// parse decodes data (the contents of the file called name) over Default()
// without validating the values. Errors are *Errors with positions.
func parse(name string, data []byte) (*Config, *index, error) {
	idx, perr := buildIndex(data)
	if perr != nil {
		// A syntax error: let go-toml report it with its position.
		if err := toml.Unmarshal(data, new(Config)); err != nil {
			return nil, nil, errorAt(name, idx, err)
		}
		return nil, nil, &Error{File: name, Msg: perr.Error()}
	}
	if es := idx.checkKinds(name); len(es) > 0 {
		return nil, nil, joinErrors(es)
	}
	c := Default()
	// Arrays replace the default wholesale; start them empty so that go-toml
	// does not merge into the default's backing array.
	if _, ok := idx.keys["meta_addrs"]; ok {
		c.MetaAddrs = nil
	}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, nil, errorAt(name, idx, err)
	}
	return c, idx, nil
}

// errorAt converts a go-toml error into *Errors with file, key and line.
func errorAt(name string, idx *index, err error) error {
	var sme *toml.StrictMissingError
	if errors.As(err, &sme) {
		es := make([]*Error, 0, len(sme.Errors))
		for i := range sme.Errors {
			de := &sme.Errors[i]
			line, col := de.Position()
			key := strings.Join(de.Key(), ".")
			if k := idx.keyAt(line, col); k != "" {
				key = k
			}
			es = append(es, &Error{File: name, Line: line, Column: col, Key: key, Msg: "unknown key" + suggest(key)})
		}
		return joinErrors(es)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, col := de.Position()
		key := idx.keyAt(line, col)
		if key == "" {
			key = strings.Join(de.Key(), ".")
		}
		if key == "" {
			key = idx.guessKey(line)
		}
		msg := strings.TrimPrefix(de.Error(), "toml: ")
		return &Error{File: name, Line: line, Column: col, Key: key, Msg: msg}
	}
	return &Error{File: name, Msg: err.Error()}
}

// suggest returns ` (did you mean "x"?)` for a misspelt key.
func suggest(key string) string {
	parent, leaf := "", key
	if i := strings.LastIndexByte(key, '.'); i >= 0 {
		parent, leaf = rootKey(key[:i]), key[i+1:]
	}
	best, bestD := "", 3
	for _, f := range Fields() {
		p, l := "", f.Key
		if i := strings.LastIndexByte(f.Key, '.'); i >= 0 {
			p, l = f.Key[:i], f.Key[i+1:]
		}
		if p != parent {
			continue
		}
		if d := editDistance(leaf, l); d < bestD {
			best, bestD = f.Key, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// Field is one leaf setting of Config.
type Field struct {
	Key  string // dotted TOML key; fields of array elements as storage.rules.match
	Type reflect.Type
}

// Fields lists every leaf setting of Config, in declaration order.
func Fields() []Field {
	var fs []Field
	var walk func(prefix string, t reflect.Type)
	walk = func(prefix string, t reflect.Type) {
		for i := range t.NumField() {
			sf := t.Field(i)
			key := prefix + strings.Split(sf.Tag.Get("toml"), ",")[0]
			ft := sf.Type
			switch {
			case ft.Kind() == reflect.Struct:
				walk(key+".", ft)
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				walk(key+".", ft.Elem())
			default:
				fs = append(fs, Field{Key: key, Type: ft})
			}
		}
	}
	walk("", reflect.TypeFor[Config]())
	return fs
}

// pos is the place of a key in the document.
type pos struct{ line, col int }

// index maps every key of a document (dotted, with [i] for array elements
// and array-table entries) to where it is written.
type index struct {
	keys   map[string]pos
	kinds  map[string]unstable.Kind // value kind of each key-value
	byLine map[int][]colKey         // keys written on each line, by column
	tables []lineKey                // table headers in document order
	lines  []string                 // the document's lines
}

type colKey struct {
	col int
	key string
}

type lineKey struct {
	line int
	key  string
}

// Keys returns the document's keys, sorted.
func (x *index) Keys() []string {
	ks := make([]string, 0, len(x.keys))
	for k := range x.keys {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// find returns the position of key, or of its closest enclosing key that is
// written in the document, or 0, 0.
func (x *index) find(key string) (line, col int) {
	for k := key; k != ""; {
		if p, ok := x.keys[k]; ok {
			return p.line, p.col
		}
		switch i := strings.LastIndexAny(k, ".["); {
		case i < 0:
			k = ""
		default:
			k = k[:i]
		}
	}
	return 0, 0
}

// keyAt returns the last key written on line at or before col (the first
// one on the line when none is), or "".
func (x *index) keyAt(line, col int) string {
	if x == nil {
		return ""
	}
	ks := x.byLine[line]
	if len(ks) == 0 {
		return ""
	}
	best := ks[0].key
	for _, k := range ks {
		if k.col <= col {
			best = k.key
		}
	}
	return best
}

var bareKeyRe = regexp.MustCompile(`^\s*([A-Za-z0-9_.-]+)\s*=`)

// guessKey finds the key of a line that did not parse from the line's text
// and the table it is in.
func (x *index) guessKey(line int) string {
	if x == nil || line < 1 || line > len(x.lines) {
		return ""
	}
	m := bareKeyRe.FindStringSubmatch(x.lines[line-1])
	if m == nil {
		return ""
	}
	table := ""
	for _, t := range x.tables {
		if t.line < line {
			table = t.key
		}
	}
	if table != "" {
		return table + "." + m[1]
	}
	return m[1]
}

func (x *index) add(p *unstable.Parser, key string, r unstable.Range) {
	s := p.Shape(r).Start
	if _, dup := x.keys[key]; !dup {
		x.keys[key] = pos{s.Line, s.Column}
	}
	x.byLine[s.Line] = append(x.byLine[s.Line], colKey{s.Column, key})
}

// buildIndex walks the document. On a syntax error it returns the partial
// index and the error.
func buildIndex(data []byte) (*index, error) {
	x := &index{keys: map[string]pos{}, kinds: map[string]unstable.Kind{}, byLine: map[int][]colKey{}, lines: strings.Split(string(data), "\n")}
	var p unstable.Parser
	p.Reset(data)
	table := ""
	arrayLen := map[string]int{} // array-table path -> entries so far
	for p.NextExpression() {
		e := p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			name, first := joinKey(e.Key())
			if e.Kind == unstable.ArrayTable {
				i := arrayLen[name]
				arrayLen[name] = i + 1
				name = fmt.Sprintf("%s[%d]", name, i)
			}
			table = name
			x.add(&p, name, first.Raw)
			x.tables = append(x.tables, lineKey{x.keys[name].line, name})
		case unstable.KeyValue:
			name, first := joinKey(e.Key())
			if table != "" {
				name = table + "." + name
			}
			x.add(&p, name, first.Raw)
			x.value(&p, name, e.Value(), first.Raw)
		}
	}
	return x, p.Error()
}

// value records the kind of the value of key and indexes array elements and
// inline-table keys.
func (x *index) value(p *unstable.Parser, key string, v *unstable.Node, keyRaw unstable.Range) {
	x.kinds[key] = v.Kind
	switch v.Kind {
	case unstable.Array:
		it := v.Children()
		for i := 0; it.Next(); {
			n := it.Node()
			if n.Kind == unstable.Comment {
				continue
			}
			ek := fmt.Sprintf("%s[%d]", key, i)
			r := keyRaw
			if n.Raw.Length > 0 {
				r = n.Raw
			}
			x.add(p, ek, r)
			x.value(p, ek, n, r)
			i++
		}
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			n := it.Node()
			if n.Kind != unstable.KeyValue {
				continue
			}
			name, first := joinKey(n.Key())
			x.add(p, key+"."+name, first.Raw)
			x.value(p, key+"."+name, n.Value(), first.Raw)
		}
	}
}

func joinKey(it unstable.Iterator) (string, *unstable.Node) {
	var parts []string
	var first *unstable.Node
	for it.Next() {
		if first == nil {
			first = it.Node()
		}
		parts = append(parts, quoteKeyPart(string(it.Node().Data)))
	}
	return strings.Join(parts, "."), first
}

func quoteKeyPart(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}

var durationType = reflect.TypeFor[Duration]()

// checkKinds reports values of Duration fields that are not strings: go-toml
// hands a TOML integer to UnmarshalText but drops its position when that
// fails, so catch them here, where the position is known.
func (x *index) checkKinds(name string) []*Error {
	want := map[string]bool{}
	for _, f := range Fields() {
		if f.Type == durationType {
			want[f.Key] = true
		}
	}
	var es []*Error
	for _, k := range x.Keys() {
		kind, ok := x.kinds[k]
		if !ok || !want[stripIndexes(k)] || kind == unstable.String {
			continue
		}
		p := x.keys[k]
		es = append(es, &Error{File: name, Line: p.line, Column: p.col, Key: k,
			Msg: fmt.Sprintf("a duration must be a string such as \"100ms\", \"30s\" or \"168h\", not a TOML %s", strings.ToLower(kind.String()))})
	}
	return es
}

// stripIndexes turns storage.rules[0].match into storage.rules.match.
func stripIndexes(key string) string {
	var b strings.Builder
	for i := 0; i < len(key); i++ {
		if key[i] == '[' {
			j := strings.IndexByte(key[i:], ']')
			if j > 0 {
				i += j
				continue
			}
		}
		b.WriteByte(key[i])
	}
	return b.String()
}
