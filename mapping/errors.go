package mapping

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// ConfigError is one problem in a config file. It prints as
// "file:line: field.path: problem", the form an editor can jump to.
type ConfigError struct {
	File string
	// Line is 1-based; 0 when the problem concerns the whole file.
	Line int
	// Field is the path of the offending setting, e.g. "tables[1].verbs.upsert";
	// list indices are 0-based. Empty when no single field is at fault.
	Field   string
	Problem string
}

func (e ConfigError) Error() string {
	var b strings.Builder
	if e.File == "" {
		b.WriteString("<config>")
	} else {
		b.WriteString(e.File)
	}
	if e.Line > 0 {
		b.WriteByte(':')
		b.WriteString(strconv.Itoa(e.Line))
	}
	b.WriteString(": ")
	if e.Field != "" {
		b.WriteString(e.Field)
		b.WriteString(": ")
	}
	b.WriteString(e.Problem)
	return b.String()
}

// Errors is every problem found in one config, in line order. Parse, New and
// CheckCatalog report all problems at once so an operator fixes a config in
// one pass instead of one error per run.
type Errors []ConfigError

func (e Errors) Error() string {
	lines := make([]string, len(e))
	for i := range e {
		lines[i] = e[i].Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.As find a single ConfigError.
func (e Errors) Unwrap() []error {
	errs := make([]error, len(e))
	for i := range e {
		errs[i] = e[i]
	}
	return errs
}

// collector gathers problems for one file.
type collector struct {
	file string
	errs Errors
}

func (c *collector) add(line int, field, problem string) {
	c.errs = append(c.errs, ConfigError{File: c.file, Line: line, Field: field, Problem: problem})
}

// err returns the collected problems sorted by line, or nil. The sort is
// stable so problems on one line keep the order they were found in, which
// follows the document.
func (c *collector) err() error {
	if len(c.errs) == 0 {
		return nil
	}
	errs := slices.Clone(c.errs)
	slices.SortStableFunc(errs, func(a, b ConfigError) int { return cmp.Compare(a.Line, b.Line) })
	return errs
}

// suggest returns `; did you mean "x"?` for the candidate closest to s, if
// one is close enough to be a typo, or "".
func suggest(s string, candidates []string) string {
	// Within two edits, and at most half the letters: for short words a
	// two-letter change is a different word, not a typo.
	best, bestDist := "", 3
	for _, c := range candidates {
		if d := editDistance(strings.ToLower(s), strings.ToLower(c)); d < bestDist && 2*d <= len(s) {
			best, bestDist = c, d
		}
	}
	if best == "" {
		return ""
	}
	return "; did you mean " + strconv.Quote(best) + "?"
}

// editDistance is the Levenshtein distance between a and b, by bytes.
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

// Suggest returns `; did you mean "x"?` for the candidate closest to s, if
// one is close enough to be a typo, or "". Other packages checking names
// against the database (acl, the root package) word their hints the same way.
func Suggest(s string, candidates []string) string { return suggest(s, candidates) }
