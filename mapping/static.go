package mapping

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// StaticSubscription is a subscription declared under `subscriptions:`.
// install and run reconcile walhook.subscriptions with these: they create,
// update and deactivate rows marked static, which the SQL API will not
// change. Target and Secret have ${ENV} references expanded.
type StaticSubscription struct {
	Name    string // unique in the config; the stable identity
	Events  []string
	Target  string
	Owner   string
	Site    string // "/" when not set
	Dialect string // DialectDefault when not set
	Secret  string // "" for unsigned
	// Pos is "file:line" of the entry, for errors found when reconciling.
	Pos string

	line  int
	lines map[string]int // line of each field
}

var (
	staticNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)
	envRefRE     = regexp.MustCompile(`\$\{([^}]*)\}`)
	envNameRE    = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	nounPattern  = regexp.MustCompile(`^[a-z][a-z0-9_]*\.\*$`)
	verbPattern  = regexp.MustCompile(`^\*\.[a-z][a-z0-9_]*$`)
)

var staticKeys = []string{"name", "events", "target", "owner", "site", "dialect", "secret"}

// subscriptions parses the `subscriptions:` list. Whether the events exist
// and the dialect is known is checked by checkStatic once the whole config is
// read.
func (p *parser) subscriptions(v *yaml.Node) []*StaticSubscription {
	if isMissing(v) {
		return nil
	}
	if v.Kind != yaml.SequenceNode {
		p.add(v.Line, "subscriptions", "want a list of subscriptions, got "+describe(v))
		return nil
	}
	var out []*StaticSubscription
	seen := map[string]int{}
	for i, item := range v.Content {
		item = resolve(item)
		path := index("subscriptions", i)
		s := &StaticSubscription{Site: "/", Dialect: DialectDefault, Pos: fmt.Sprintf("%s:%d", p.file, item.Line)}
		lines := map[string]int{}
		p.fields(item, path, staticKeys, func(key string, k, v *yaml.Node) {
			lines[key] = v.Line
			f := path + "." + key
			switch key {
			case "name":
				s.Name, _ = p.str(v, f)
			case "events":
				var ls []int
				s.Events, ls = p.strList(v, f)
				for j, e := range s.Events {
					if !validEventEntry(e) {
						p.add(ls[j], index(f, j), fmt.Sprintf("%q is neither an event name nor a pattern (noun.*, *.verb or *)", e))
					}
				}
			case "target":
				s.Target = p.expand(v, f)
			case "owner":
				s.Owner, _ = p.str(v, f)
			case "site":
				s.Site, _ = p.str(v, f)
			case "dialect":
				s.Dialect, _ = p.str(v, f)
			case "secret":
				s.Secret = p.expand(v, f)
			}
		})
		switch {
		case s.Name == "":
			p.add(item.Line, path+".name", "required: a unique name, the subscription's stable identity")
		case !staticNameRE.MatchString(s.Name):
			p.add(lines["name"], path+".name", fmt.Sprintf("invalid name %q (want lower-case letters, digits, _ . and -)", s.Name))
		case seen[s.Name] != 0:
			p.add(lines["name"], path+".name", fmt.Sprintf("name %q is already used at line %d; names must be unique", s.Name, seen[s.Name]))
		default:
			seen[s.Name] = lines["name"]
		}
		for _, req := range []struct{ field, value, what string }{
			{"target", s.Target, "the URL to deliver to"},
			{"owner", s.Owner, "the owner whose acl rules judge what it receives"},
		} {
			if strings.TrimSpace(req.value) == "" && lines[req.field] == 0 {
				p.add(item.Line, path+"."+req.field, "required: "+req.what)
			} else if strings.TrimSpace(req.value) == "" {
				p.add(lines[req.field], path+"."+req.field, "empty (want "+req.what+")")
			}
		}
		if len(s.Events) == 0 {
			p.add(item.Line, path+".events", `required: the event names or patterns to deliver, e.g. ["order.*"]`)
		}
		out = append(out, s)
		s.lines = lines
		s.line = item.Line
	}
	return out
}

// expand reads a string and replaces each ${NAME} with the environment
// variable NAME, which must be set: a secret that silently became "" would
// send unsigned requests.
func (p *parser) expand(v *yaml.Node, path string) string {
	s, ok := p.str(v, path)
	if !ok {
		return ""
	}
	return envRefRE.ReplaceAllStringFunc(s, func(ref string) string {
		name := ref[2 : len(ref)-1]
		if !envNameRE.MatchString(name) {
			p.add(v.Line, path, fmt.Sprintf("invalid environment reference %s (want ${NAME})", strconv.Quote(ref)))
			return ""
		}
		val, set := os.LookupEnv(name)
		if !set {
			p.add(v.Line, path, fmt.Sprintf("environment variable %s is not set", name))
		}
		return val
	})
}

// validEventEntry reports whether e is an event name or a pattern.
func validEventEntry(e string) bool {
	return e == "*" || eventRE.MatchString(e) || nounPattern.MatchString(e) || verbPattern.MatchString(e)
}

// EventMatches reports whether an entry of a subscription's events (a name
// or a pattern) takes the event name: noun.* takes the names whose part
// before the first dot is noun, *.verb those whose part after the last dot
// is verb.
func EventMatches(entry, name string) bool {
	switch {
	case entry == "*":
		return true
	case strings.HasSuffix(entry, ".*"):
		noun, _, _ := strings.Cut(name, ".")
		return noun == entry[:len(entry)-2]
	case strings.HasPrefix(entry, "*."):
		return name[strings.LastIndexByte(name, '.')+1:] == entry[2:]
	}
	return entry == name
}

// checkStatic checks what the static subscriptions refer to: that each entry
// of events takes at least one event of the config's tables, and that the
// dialect exists.
func checkStatic(file string, cfg *Config) Errors {
	c := collector{file: file}
	offered := offeredEvents(cfg.Tables)
	for i, s := range cfg.Subscriptions {
		path := index("subscriptions", i)
		for j, e := range s.Events {
			if !validEventEntry(e) || slices.ContainsFunc(offered, func(name string) bool { return EventMatches(e, name) }) {
				continue
			}
			c.add(s.lineOf("events"), index(path+".events", j), fmt.Sprintf("%q matches no event of the tables%s", e, suggest(e, offered)))
		}
		if _, ok := cfg.Dialects[s.Dialect]; !ok {
			c.add(s.lineOf("dialect"), path+".dialect", fmt.Sprintf("unknown dialect %q%s", s.Dialect, suggest(s.Dialect, dialectNames(cfg))))
		}
	}
	return c.errs
}

func (s *StaticSubscription) lineOf(field string) int {
	if l := s.lines[field]; l > 0 {
		return l
	}
	return s.line
}

// offeredEvents lists the event names the tables produce.
func offeredEvents(tables []*TableConfig) []string {
	var out []string
	for _, t := range tables {
		for _, op := range ops {
			verbs := t.Verbs
			if verbs == nil {
				verbs = DefaultVerbs()
			}
			if v := verbs[op]; v != "" && t.Noun != "" {
				out = append(out, t.Noun+"."+v)
			}
		}
		for _, d := range t.Events {
			out = append(out, d.Name)
		}
	}
	return out
}

func dialectNames(cfg *Config) []string {
	names := make([]string, 0, len(cfg.Dialects))
	for n := range cfg.Dialects {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
