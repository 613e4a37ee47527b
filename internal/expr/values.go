package expr

import (
	"bytes"
	"database/sql/driver"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"time"

	"cel.dev/cel-go/common/types"
	"cel.dev/cel-go/common/types/ref"

	"github.com/walhook/walhook/internal/change"
)

// Input is one row change as the rules see it. New and Old come from
// RowValues (or InputFor); each is nil when the change has no such row: New on
// deletes, Old on inserts and on updates whose old row was not sent.
type Input struct {
	Op change.Op
	// Table is the change's table, schema.name. Allow and When check it
	// against the rule's table when set, to catch a rule applied to the wrong
	// table's rows.
	Table string
	// Site is the row's site path, bound to the variable `site`.
	Site     string
	New, Old map[string]any
}

// InputFor builds the Input of ch, converting its rows once. Columns of the
// new row that were not sent (unchanged TOAST values) are taken from the old
// row when it has them, as it does under REPLICA IDENTITY FULL, so a rule
// reading such a column sees its value instead of failing.
func InputFor(ch *change.Change, site string) *Input {
	in := &Input{Op: ch.Op, Table: ch.Relation.QualifiedName(), Site: site}
	if ch.Old != nil {
		in.Old = rowValues(ch.Relation, ch.Old, nil)
	}
	if ch.New != nil {
		in.New = rowValues(ch.Relation, ch.New, ch.Old)
	}
	return in
}

// RowValues converts a decoded row to CEL values once, so that judging the
// row for many owners never converts it again. The map is keyed by column name
// and every value is a CEL value (ref.Val), which the evaluator uses as is:
//
//   - int2, int4, int8, oid: int
//   - float4, float8: double, with NaN and ±Infinity
//   - numeric: double. This is lossy past 15-17 significant digits and for
//     integers beyond ±2^53; rules compare amounts and ids, for which that is
//     enough, and a double keeps arithmetic and comparisons with literals
//     working the same for every row. The exact text is in the webhook body.
//   - bool: bool
//   - timestamptz, timestamp (read as UTC), date (midnight UTC): timestamp.
//     Values CEL cannot hold (infinity, BC dates, years past 9999) stay
//     strings, so comparing them with a timestamp fails and the rule denies.
//   - json, jsonb: maps, lists, strings, doubles, bools and null, as CEL reads
//     JSON
//   - bytea: bytes
//   - one- or multi-dimensional arrays of the types above, text-like types
//     and uuid: lists, NULL elements as null
//   - text, varchar, char, name, uuid, enums and every other type: string, the
//     text PostgreSQL sent.
//   - domains as their base type, arrays of domains and enums as lists of
//     those: the stream resolves them from the catalog (change.Column.Base).
//     Arrays of other types (composites, ranges) are strings.
//
// NULL is null. Unchanged columns (unchanged TOAST values, or columns not
// sent) are absent, so a rule that reads one fails and denies rather than
// seeing a NULL that is not there. Text a type's converter cannot parse is
// kept as a string.
func RowValues(rel *change.Relation, row change.Row) map[string]any {
	return rowValues(rel, row, nil)
}

// rowValues is RowValues taking unchanged columns from fill when fill is
// non-nil and has them.
func rowValues(rel *change.Relation, row, fill change.Row) map[string]any {
	m := make(map[string]any, len(row))
	for i, d := range row {
		if i >= len(rel.Columns) {
			break
		}
		if d.Kind == change.Unchanged && i < len(fill) {
			d = fill[i]
		}
		col := &rel.Columns[i]
		switch d.Kind {
		case change.Null:
			m[col.Name] = types.NullValue
		case change.Text:
			m[col.Name] = convert(col.ValueType(), d.Text)
		}
	}
	return m
}

// PostgreSQL type OIDs, fixed in the catalog since forever. They are spelled
// out here rather than taken from pgtype so that this package imports nothing
// from the driver.
const (
	oidBool        = 16
	oidBytea       = 17
	oidInt8        = 20
	oidInt2        = 21
	oidInt4        = 23
	oidOID         = 26
	oidJSON        = 114
	oidFloat4      = 700
	oidFloat8      = 701
	oidDate        = 1082
	oidTimestamp   = 1114
	oidTimestamptz = 1184
	oidNumeric     = 1700
	oidJSONB       = 3802
)

// arrayElems maps array type OIDs to their element OIDs. Every type here uses
// ',' as its delimiter. Elements of text-like types and uuid convert as
// strings, the default.
var arrayElems = map[uint32]uint32{
	1000: oidBool,
	1001: oidBytea,
	1005: oidInt2,
	1007: oidInt4,
	1016: oidInt8,
	1028: oidOID,
	1021: oidFloat4,
	1022: oidFloat8,
	1231: oidNumeric,
	1182: oidDate,
	1115: oidTimestamp,
	1185: oidTimestamptz,
	199:  oidJSON,
	3807: oidJSONB,
	1009: 25,   // text
	1015: 1043, // varchar
	1014: 1042, // bpchar
	1003: 19,   // name
	1002: 18,   // "char"
	2951: 2950, // uuid
	1041: 869,  // inet
	651:  650,  // cidr
}

// convert returns the CEL value of text sent for a column of type oid.
func convert(oid uint32, text []byte) ref.Val {
	switch oid {
	case oidInt2, oidInt4, oidInt8, oidOID:
		if n, ok := parseInt(text); ok {
			return types.Int(n)
		}
	case oidFloat4, oidFloat8, oidNumeric:
		if f, ok := parseFloat(text); ok {
			return types.Double(f)
		}
	case oidBool:
		if len(text) == 1 && (text[0] == 't' || text[0] == 'f') {
			return types.Bool(text[0] == 't')
		}
	case oidTimestamptz, oidTimestamp, oidDate:
		if t, ok := parseTime(text, oid == oidDate); ok {
			return types.Timestamp{Time: t}
		}
	case oidJSON, oidJSONB:
		var v any
		if err := json.Unmarshal(text, &v); err == nil {
			return jsonValue(v)
		}
	case oidBytea:
		if len(text) >= 2 && text[0] == '\\' && text[1] == 'x' {
			b := make([]byte, hex.DecodedLen(len(text)-2))
			if _, err := hex.Decode(b, text[2:]); err == nil {
				return types.Bytes(b)
			}
		}
	default:
		if elem, ok := arrayElems[oid]; ok {
			if l, ok := parseArray(text, elem); ok {
				return l
			}
		}
	}
	return types.String(text)
}

// parseInt reads integer output without the allocation strconv's error path
// makes for every call that is handed a []byte.
func parseInt(text []byte) (int64, bool) {
	neg := len(text) > 0 && text[0] == '-'
	if neg {
		text = text[1:]
	}
	if len(text) == 0 || len(text) > 19 {
		return 0, false
	}
	var n uint64
	for _, c := range text {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	switch {
	case neg && n <= 1<<63:
		return int64(-n), true
	case !neg && n <= math.MaxInt64:
		return int64(n), true
	}
	return 0, false
}

// parseFloat reads float4, float8 and numeric output: decimal or exponent
// forms, NaN, Infinity and -Infinity. strconv accepts all of them but also
// hex floats and underscores, which PostgreSQL never sends; refusing those
// keeps odd text a string rather than a surprising number.
func parseFloat(text []byte) (float64, bool) {
	for _, c := range text {
		if c == '_' || c == 'x' || c == 'X' || c == 'p' || c == 'P' {
			return 0, false
		}
	}
	f, err := strconv.ParseFloat(string(text), 64)
	if err != nil && !isRangeErr(err) {
		return 0, false
	}
	// Out of range values come back as ±Inf with ErrRange; numeric can hold
	// them, a double cannot, and ±Inf still compares the right way.
	return f, true
}

func isRangeErr(err error) bool {
	ne, ok := err.(*strconv.NumError)
	return ok && ne.Err == strconv.ErrRange
}

// parseTime reads ISO DateStyle output in UTC sessions:
// "YYYY-MM-DD[ HH:MM:SS[.ffffff]][±HH[:MM[:SS]]]". A time without an offset
// (timestamp, date) is taken as UTC. Anything else (infinity, " BC", years of
// more than four digits) is refused: CEL timestamps cover years 1 to 9999.
func parseTime(b []byte, dateOnly bool) (time.Time, bool) {
	num := func(s []byte) (int, bool) {
		n := 0
		for _, c := range s {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, len(s) > 0
	}
	if len(b) < 10 || b[4] != '-' || b[7] != '-' {
		return time.Time{}, false
	}
	year, ok1 := num(b[0:4])
	month, ok2 := num(b[5:7])
	day, ok3 := num(b[8:10])
	if !ok1 || !ok2 || !ok3 || year == 0 || month < 1 || month > 12 || day < 1 || day > 31 {
		return time.Time{}, false
	}
	if dateOnly || len(b) == 10 {
		t := time.Date(year, time.Month(month), day, 0, 0, 0, 0, time.UTC)
		// time.Date normalises Feb 30 into March; PostgreSQL never sends
		// such a date, so a mismatch means the text is not a date.
		return t, len(b) == 10 && t.Day() == day
	}
	b = b[10:]
	if len(b) < 9 || b[0] != ' ' || b[3] != ':' || b[6] != ':' {
		return time.Time{}, false
	}
	hour, ok1 := num(b[1:3])
	minute, ok2 := num(b[4:6])
	sec, ok3 := num(b[7:9])
	if !ok1 || !ok2 || !ok3 || hour > 23 || minute > 59 || sec > 59 {
		return time.Time{}, false
	}
	b = b[9:]
	nsec := 0
	if len(b) > 0 && b[0] == '.' {
		i := 1
		scale := 100_000_000
		for ; i < len(b) && b[i] >= '0' && b[i] <= '9'; i++ {
			nsec += int(b[i]-'0') * scale
			scale /= 10
		}
		if i == 1 {
			return time.Time{}, false
		}
		b = b[i:]
	}
	offset := 0
	if len(b) > 0 {
		sign := 1
		switch b[0] {
		case '+':
		case '-':
			sign = -1
		default:
			return time.Time{}, false
		}
		// ±HH, ±HH:MM or ±HH:MM:SS.
		b = b[1:]
		if len(b) != 2 && len(b) != 5 && len(b) != 8 {
			return time.Time{}, false
		}
		for i, unit := range [3]int{3600, 60, 1} {
			if 3*i >= len(b) {
				break
			}
			if i > 0 && b[3*i-1] != ':' {
				return time.Time{}, false
			}
			n, ok := num(b[3*i : 3*i+2])
			if !ok {
				return time.Time{}, false
			}
			offset += n * unit
		}
		offset *= sign
	}
	t := time.Date(year, time.Month(month), day, hour, minute, sec, nsec, time.UTC)
	if t.Day() != day {
		return time.Time{}, false
	}
	t = t.Add(-time.Duration(offset) * time.Second)
	if t.Year() < 1 || t.Year() > 9999 {
		return time.Time{}, false
	}
	return t, true
}

// jsonValue converts a value decoded by encoding/json. Objects become maps
// of CEL values so that selecting a key needs no further conversion.
func jsonValue(v any) ref.Val {
	switch v := v.(type) {
	case nil:
		return types.NullValue
	case bool:
		return types.Bool(v)
	case float64:
		return types.Double(v)
	case string:
		return types.String(v)
	case []any:
		l := make([]ref.Val, len(v))
		for i, e := range v {
			l[i] = jsonValue(e)
		}
		return types.NewRefValList(types.DefaultTypeAdapter, l)
	case map[string]any:
		for k, e := range v {
			v[k] = jsonValue(e)
		}
		return types.NewStringInterfaceMap(types.DefaultTypeAdapter, v)
	}
	return types.NewErr("unexpected JSON value %T", v)
}

// parseArray reads PostgreSQL array output: {a,"b c",NULL}, nested braces for
// more dimensions, and an optional "[lo:hi]=" prefix when a lower bound is not
// 1. It returns false for anything it cannot read, and the caller keeps the
// text as a string.
func parseArray(text []byte, elem uint32) (ref.Val, bool) {
	if len(text) > 0 && text[0] == '[' {
		i := bytes.Index(text, []byte("]={"))
		if i < 0 {
			return nil, false
		}
		// Skip every dimension's bounds: "[1:2][0:1]={...}".
		text = text[i+2:]
	}
	p := arrayParser{text: text, elem: elem}
	l, ok := p.list()
	if !ok || p.pos != len(p.text) {
		return nil, false
	}
	return l, true
}

type arrayParser struct {
	text []byte
	pos  int
	elem uint32
	buf  []byte
}

// list reads one brace-enclosed level.
func (p *arrayParser) list() (ref.Val, bool) {
	if p.pos >= len(p.text) || p.text[p.pos] != '{' {
		return nil, false
	}
	p.pos++
	var out []ref.Val
	if p.pos < len(p.text) && p.text[p.pos] == '}' {
		p.pos++
		return types.NewRefValList(types.DefaultTypeAdapter, []ref.Val{}), true
	}
	for {
		if p.pos >= len(p.text) {
			return nil, false
		}
		var v ref.Val
		var ok bool
		switch p.text[p.pos] {
		case '{':
			v, ok = p.list()
		case '"':
			v, ok = p.quoted()
		default:
			v, ok = p.bare()
		}
		if !ok {
			return nil, false
		}
		out = append(out, v)
		if p.pos >= len(p.text) {
			return nil, false
		}
		switch p.text[p.pos] {
		case ',':
			p.pos++
		case '}':
			p.pos++
			return types.NewRefValList(types.DefaultTypeAdapter, out), true
		default:
			return nil, false
		}
	}
}

func (p *arrayParser) quoted() (ref.Val, bool) {
	p.pos++ // opening quote
	p.buf = p.buf[:0]
	for p.pos < len(p.text) {
		c := p.text[p.pos]
		switch c {
		case '\\':
			if p.pos+1 >= len(p.text) {
				return nil, false
			}
			p.buf = append(p.buf, p.text[p.pos+1])
			p.pos += 2
		case '"':
			p.pos++
			return convert(p.elem, p.buf), true
		default:
			p.buf = append(p.buf, c)
			p.pos++
		}
	}
	return nil, false
}

func (p *arrayParser) bare() (ref.Val, bool) {
	start := p.pos
	for p.pos < len(p.text) && p.text[p.pos] != ',' && p.text[p.pos] != '}' {
		switch p.text[p.pos] {
		case '"', '{', '\\':
			return nil, false
		}
		p.pos++
	}
	s := p.text[start:p.pos]
	if len(s) == 0 {
		return nil, false
	}
	// An unquoted NULL is SQL NULL; the string "NULL" is always quoted.
	if len(s) == 4 && bytes.EqualFold(s, []byte("null")) {
		return types.NullValue, true
	}
	return convert(p.elem, s), true
}

// Value converts a Go value to the CEL value rules see. Owners uses it for
// attributes a Source loads; it accepts what database/sql and pgx scan into
// `any`: nil, bool, integers, floats, string, []byte, time.Time, [16]byte
// (a UUID), slices and arrays, maps with string keys, and driver.Valuer
// (pgtype values). Anything else becomes its CEL adaptation when cel-go has
// one, else its fmt %v string. CEL values are returned as they are.
func Value(v any) ref.Val {
	switch v := v.(type) {
	case nil:
		return types.NullValue
	case ref.Val:
		return v
	case bool:
		return types.Bool(v)
	case int:
		return types.Int(v)
	case int8:
		return types.Int(v)
	case int16:
		return types.Int(v)
	case int32:
		return types.Int(v)
	case int64:
		return types.Int(v)
	case uint8:
		return types.Int(v)
	case uint16:
		return types.Int(v)
	case uint32:
		return types.Int(v)
	case uint64:
		// Integers are int everywhere else (row values, literals), and CEL
		// has no mixed int/uint arithmetic: owner.level + 1 must work.
		if v <= math.MaxInt64 {
			return types.Int(v)
		}
		return types.Uint(v)
	case uint:
		if v <= math.MaxInt64 {
			return types.Int(v)
		}
		return types.Uint(v)
	case float32:
		return types.Double(v)
	case float64:
		return types.Double(v)
	case string:
		return types.String(v)
	case []byte:
		return types.Bytes(v)
	case time.Time:
		return types.Timestamp{Time: v.UTC()}
	case time.Duration:
		return types.Duration{Duration: v}
	case [16]byte:
		return types.String(formatUUID(v))
	case []any:
		l := make([]ref.Val, len(v))
		for i, e := range v {
			l[i] = Value(e)
		}
		return types.NewRefValList(types.DefaultTypeAdapter, l)
	case []string:
		l := make([]ref.Val, len(v))
		for i, e := range v {
			l[i] = types.String(e)
		}
		return types.NewRefValList(types.DefaultTypeAdapter, l)
	case map[string]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[k] = Value(e)
		}
		return types.NewStringInterfaceMap(types.DefaultTypeAdapter, m)
	case driver.Valuer:
		dv, err := v.Value()
		if err != nil {
			return types.NewErr("%T: %v", v, err)
		}
		if _, again := dv.(driver.Valuer); again {
			return types.String(fmt.Sprint(dv))
		}
		return Value(dv)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		l := make([]ref.Val, rv.Len())
		for i := range l {
			l[i] = Value(rv.Index(i).Interface())
		}
		return types.NewRefValList(types.DefaultTypeAdapter, l)
	case reflect.Map:
		if rv.Type().Key().Kind() == reflect.String {
			m := make(map[string]any, rv.Len())
			for it := rv.MapRange(); it.Next(); {
				m[it.Key().String()] = Value(it.Value().Interface())
			}
			return types.NewStringInterfaceMap(types.DefaultTypeAdapter, m)
		}
	case reflect.Pointer:
		if rv.IsNil() {
			return types.NullValue
		}
		return Value(rv.Elem().Interface())
	}
	if cv := types.DefaultTypeAdapter.NativeToValue(v); !types.IsError(cv) {
		return cv
	}
	return types.String(fmt.Sprint(v))
}

func formatUUID(u [16]byte) string {
	var b [36]byte
	hex.Encode(b[0:8], u[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], u[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], u[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], u[8:10])
	b[23] = '-'
	hex.Encode(b[24:], u[10:])
	return string(b[:])
}
