package change

import (
	"slices"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgtype"
)

// The encoders below assume the session settings walhook's replication
// connection uses: DateStyle=ISO, TimeZone=UTC, IntervalStyle=postgres,
// extra_float_digits=3, bytea_output=hex. Any text that does not have the shape
// those settings produce is emitted as a JSON string of the text as sent, so
// that no input, however malformed, loses data or makes the document invalid
// (json and jsonb excepted; see appendRawJSON).

// Types beyond the built-ins below get their encoders from cdc, which reads
// the catalog: a domain uses its base type's encoder, an array of any type
// ArrayEncoder over its element's, a composite CompositeEncoder over its
// attributes'. Enums, ranges and multiranges stay strings in PostgreSQL's
// text form ("[1,5)"), as to_json gives them: lossless, and every client
// library parses it, where an object {lower, upper, ...} would be walhook's
// own invention. README's type table is the user-facing list.

// EncoderFor returns the Encoder for a type OID. Array types are decoded with
// the encoder of their built-in element type. Unknown OIDs (enums, domains,
// composites, extension and user types) and arrays of them encode as JSON
// strings of their text form; a caller that can read the catalog builds their
// encoders from these parts with BuiltinEncoder, ArrayEncoder and
// CompositeEncoder (cdc does, per type, when a relation arrives).
func EncoderFor(oid uint32) Encoder {
	if enc, ok := encoders[oid]; ok {
		return enc
	}
	return AppendString
}

// BuiltinEncoder returns the Encoder for a built-in type that has a JSON form
// other than a string, and false for every other OID. It tells a resolver
// which OIDs it need not look up.
func BuiltinEncoder(oid uint32) (Encoder, bool) {
	enc, ok := encoders[oid]
	return enc, ok
}

// AppendJSON appends d as JSON using enc.
//
// Null appends null. Unchanged appends nothing and returns dst as is: the
// value was not sent, and writing null would claim the column is NULL, so the
// caller must leave the column out or fill it from the old image before
// writing its key. Any other kind, which the text-format stream never sends,
// appends null so that the surrounding document stays valid. A nil enc
// encodes the text as a JSON string.
func AppendJSON(dst []byte, enc Encoder, d Datum) []byte {
	switch d.Kind {
	case Text:
		if enc == nil {
			return AppendString(dst, d.Text)
		}
		return enc(dst, d.Text)
	case Unchanged:
		return dst
	default:
		return append(dst, "null"...)
	}
}

// encoders holds every OID whose encoder is not AppendString; it is read-only
// after init, so concurrent EncoderFor calls need no lock.
var encoders = buildEncoders()

func buildEncoders() map[uint32]Encoder {
	m := map[uint32]Encoder{
		pgtype.Int2OID:        appendNumber,
		pgtype.Int4OID:        appendNumber,
		pgtype.Int8OID:        appendNumber,
		pgtype.OIDOID:         appendNumber,
		pgtype.NumericOID:     appendNumber,
		pgtype.Float4OID:      appendFloat,
		pgtype.Float8OID:      appendFloat,
		pgtype.BoolOID:        appendBool,
		pgtype.JSONOID:        appendRawJSON,
		pgtype.JSONBOID:       appendRawJSON,
		pgtype.ByteaOID:       appendBytea,
		pgtype.TimestampOID:   appendTimestamp,
		pgtype.TimestamptzOID: appendTimestamptz,
	}
	// Array OID -> element OID. Elements whose OID is not in m are strings.
	// Every type here uses ',' as its array delimiter; box, the one built-in
	// type that does not, is left out and so encodes as a string.
	arrays := map[uint32]uint32{
		pgtype.Int2ArrayOID:        pgtype.Int2OID,
		pgtype.Int4ArrayOID:        pgtype.Int4OID,
		pgtype.Int8ArrayOID:        pgtype.Int8OID,
		pgtype.OIDArrayOID:         pgtype.OIDOID,
		pgtype.NumericArrayOID:     pgtype.NumericOID,
		pgtype.Float4ArrayOID:      pgtype.Float4OID,
		pgtype.Float8ArrayOID:      pgtype.Float8OID,
		pgtype.BoolArrayOID:        pgtype.BoolOID,
		pgtype.JSONArrayOID:        pgtype.JSONOID,
		pgtype.JSONBArrayOID:       pgtype.JSONBOID,
		pgtype.ByteaArrayOID:       pgtype.ByteaOID,
		pgtype.TimestampArrayOID:   pgtype.TimestampOID,
		pgtype.TimestamptzArrayOID: pgtype.TimestamptzOID,
		pgtype.DateArrayOID:        pgtype.DateOID,
		pgtype.TextArrayOID:        pgtype.TextOID,
		pgtype.VarcharArrayOID:     pgtype.VarcharOID,
		pgtype.BPCharArrayOID:      pgtype.BPCharOID,
		pgtype.NameArrayOID:        pgtype.NameOID,
		pgtype.QCharArrayOID:       pgtype.QCharOID,
		pgtype.UUIDArrayOID:        pgtype.UUIDOID,
		pgtype.TimeArrayOID:        pgtype.TimeOID,
		pgtype.TimetzArrayOID:      pgtype.TimetzOID,
		pgtype.IntervalArrayOID:    pgtype.IntervalOID,
		pgtype.InetArrayOID:        pgtype.InetOID,
		pgtype.CIDRArrayOID:        pgtype.CIDROID,
		pgtype.MacaddrArrayOID:     pgtype.MacaddrOID,
		pgtype.XMLArrayOID:         pgtype.XMLOID,
		pgtype.TSVectorArrayOID:    pgtype.TSVectorOID,
		pgtype.JSONPathArrayOID:    pgtype.JSONPathOID,
		pgtype.BitArrayOID:         pgtype.BitOID,
		pgtype.VarbitArrayOID:      pgtype.VarbitOID,
	}
	for arr, elem := range arrays {
		enc, ok := m[elem]
		if !ok {
			enc = AppendString
		}
		m[arr] = ArrayEncoder(enc, ',')
	}
	return m
}

// AppendString appends s as a JSON string literal (RFC 8259). Only '"', '\'
// and control characters are escaped; '<', '>', '&', U+2028 and U+2029 are
// valid JSON and stay literal. Each byte that is not part of valid UTF-8 is
// replaced with U+FFFD, as encoding/json does, so the output is always valid
// UTF-8.
func AppendString(dst, s []byte) []byte {
	dst = slices.Grow(dst, len(s)+2)
	dst = append(dst, '"')
	// Runs of bytes that need no escaping are copied in one append.
	run := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if plain[c] {
				i++
				continue
			}
			dst = append(dst, s[run:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			run = i
			continue
		}
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[run:i]...)
			dst = append(dst, "\uFFFD"...)
			i++
			run = i
			continue
		}
		i += size
	}
	dst = append(dst, s[run:]...)
	return append(dst, '"')
}

const hexDigits = "0123456789abcdef"

// plain marks the ASCII bytes a JSON string may hold unescaped.
var plain = func() (t [utf8.RuneSelf]bool) {
	for c := 0x20; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendNumber serves the integer types and numeric, whose output is always a
// JSON number or, for numeric, NaN or ±Infinity. It is copied as sent, never
// through float64, so that int8 and numeric keep every digit.
func appendNumber(dst, text []byte) []byte {
	if isJSONNumber(text) {
		return append(dst, text...)
	}
	return AppendString(dst, text)
}

// isJSONNumber reports whether b matches the RFC 8259 number grammar:
// -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i == len(b):
		return false
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i = skipDigits(b, i+1)
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		j := skipDigits(b, i+1)
		if j == i+1 {
			return false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := skipDigits(b, i)
		if j == i {
			return false
		}
		i = j
	}
	return i == len(b)
}

func skipDigits(b []byte, i int) int {
	for i < len(b) && isDigit(b[i]) {
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// appendFloat copies float4 and float8 output, which with extra_float_digits
// > 0 is already a JSON number ("1e+20", "-0", "1.5e-07") or NaN/±Infinity.
// Decimal forms JSON rejects but that denote a number exactly (".5", "5.",
// "+1", "007") are rewritten rather than demoted to strings, so a consumer
// always sees a finite float as a JSON number.
func appendFloat(dst, text []byte) []byte {
	if isJSONNumber(text) {
		return append(dst, text...)
	}
	i := 0
	neg := false
	if i < len(text) && (text[i] == '+' || text[i] == '-') {
		neg = text[i] == '-'
		i++
	}
	intStart := i
	i = skipDigits(text, i)
	intPart := text[intStart:i]
	var frac []byte
	if i < len(text) && text[i] == '.' {
		j := skipDigits(text, i+1)
		frac = text[i+1 : j]
		i = j
	}
	if len(intPart) == 0 && len(frac) == 0 {
		return AppendString(dst, text)
	}
	expStart := i
	if i < len(text) && (text[i] == 'e' || text[i] == 'E') {
		i++
		if i < len(text) && (text[i] == '+' || text[i] == '-') {
			i++
		}
		j := skipDigits(text, i)
		if j == i {
			return AppendString(dst, text)
		}
		i = j
	}
	if i != len(text) {
		return AppendString(dst, text)
	}
	if neg {
		dst = append(dst, '-')
	}
	for len(intPart) > 1 && intPart[0] == '0' {
		intPart = intPart[1:]
	}
	if len(intPart) == 0 {
		dst = append(dst, '0')
	} else {
		dst = append(dst, intPart...)
	}
	if len(frac) > 0 {
		dst = append(dst, '.')
		dst = append(dst, frac...)
	}
	return append(dst, text[expStart:]...)
}

func appendBool(dst, text []byte) []byte {
	if len(text) == 1 {
		switch text[0] {
		case 't':
			return append(dst, "true"...)
		case 'f':
			return append(dst, "false"...)
		}
	}
	return AppendString(dst, text)
}

// appendRawJSON embeds json and jsonb text unchanged: PostgreSQL only stores
// and sends valid JSON for these types, and validating every document on the
// hot path would cost a full scan per value for no gain. This is the one
// encoder whose output is only as valid as its input.
func appendRawJSON(dst, text []byte) []byte {
	return append(dst, text...)
}

const base64Std = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

// unhex maps a hex digit to its value and anything else to 0xff, so that OR-ing
// the lookups of several digits flags any bad one with a single compare.
var unhex = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c-'a') + 10
		t[c-'a'+'A'] = byte(c-'a') + 10
	}
	return t
}()

// appendBytea converts bytea's hex output (\x0a0b) to a padded standard
// base64 string, decoding and encoding in one pass so that the bytes are never
// materialised. Text in any other form (escape format) is kept as a string.
func appendBytea(dst, text []byte) []byte {
	if len(text) < 2 || text[0] != '\\' || text[1] != 'x' || len(text)%2 != 0 {
		return AppendString(dst, text)
	}
	h := text[2:]
	start := len(dst)
	dst = slices.Grow(dst, 2+(len(h)/2+2)/3*4)
	dst = append(dst, '"')
	for ; len(h) >= 6; h = h[6:] {
		a, b, c, d, e, f := unhex[h[0]], unhex[h[1]], unhex[h[2]], unhex[h[3]], unhex[h[4]], unhex[h[5]]
		if a|b|c|d|e|f > 0xf {
			return AppendString(dst[:start], text)
		}
		v := uint(a)<<20 | uint(b)<<16 | uint(c)<<12 | uint(d)<<8 | uint(e)<<4 | uint(f)
		dst = append(dst, base64Std[v>>18], base64Std[v>>12&0x3f], base64Std[v>>6&0x3f], base64Std[v&0x3f])
	}
	switch len(h) {
	case 2:
		a, b := unhex[h[0]], unhex[h[1]]
		if a|b > 0xf {
			return AppendString(dst[:start], text)
		}
		v := uint(a)<<4 | uint(b)
		dst = append(dst, base64Std[v>>2], base64Std[v<<4&0x3f], '=', '=')
	case 4:
		a, b, c, d := unhex[h[0]], unhex[h[1]], unhex[h[2]], unhex[h[3]]
		if a|b|c|d > 0xf {
			return AppendString(dst[:start], text)
		}
		v := uint(a)<<12 | uint(b)<<8 | uint(c)<<4 | uint(d)
		dst = append(dst, base64Std[v>>10], base64Std[v>>4&0x3f], base64Std[v<<2&0x3f], '=')
	}
	return append(dst, '"')
}

// timestampShape is the ISO DateStyle prefix of timestamp output; '0' stands
// for any digit. Years outside 0001-9999 and BC dates do not fit it, and RFC
// 3339 cannot express them, so they fall back to the text as sent.
const timestampShape = "0000-00-00 00:00:00"

// timestampLen returns the length of the "YYYY-MM-DD HH:MM:SS[.f+]" prefix of
// text, or 0 if text does not start with one.
func timestampLen(text []byte) int {
	if len(text) < len(timestampShape) {
		return 0
	}
	for i := 0; i < len(timestampShape); i++ {
		if want := timestampShape[i]; want == '0' {
			if !isDigit(text[i]) {
				return 0
			}
		} else if text[i] != want {
			return 0
		}
	}
	n := len(timestampShape)
	if n < len(text) && text[n] == '.' {
		j := skipDigits(text, n+1)
		if j == n+1 {
			return 0
		}
		n = j
	}
	return n
}

// appendDateTime writes the RFC 3339 date-time for the validated prefix
// text[:n] without the closing quote; it needs no escaping as it is all ASCII
// digits and punctuation.
func appendDateTime(dst, text []byte, n int) []byte {
	dst = append(dst, '"')
	dst = append(dst, text[:10]...)
	dst = append(dst, 'T')
	return append(dst, text[11:n]...)
}

func appendTimestamp(dst, text []byte) []byte {
	n := timestampLen(text)
	if n == 0 || n != len(text) {
		return AppendString(dst, text)
	}
	return append(appendDateTime(dst, text, n), '"')
}

// appendTimestamptz rewrites PostgreSQL's "+HH" or "+HH:MM" offset into RFC
// 3339 form. An offset with seconds (local mean time zones) has no RFC 3339
// form and falls back to the text as sent.
func appendTimestamptz(dst, text []byte) []byte {
	n := timestampLen(text)
	if n == 0 {
		return AppendString(dst, text)
	}
	off := text[n:]
	if (len(off) != 3 && len(off) != 6) ||
		(off[0] != '+' && off[0] != '-') || !isDigit(off[1]) || !isDigit(off[2]) ||
		(len(off) == 6 && (off[3] != ':' || !isDigit(off[4]) || !isDigit(off[5]))) {
		return AppendString(dst, text)
	}
	dst = appendDateTime(dst, text, n)
	m0, m1 := byte('0'), byte('0')
	if len(off) == 6 {
		m0, m1 = off[4], off[5]
	}
	if off[0] == '+' && off[1] == '0' && off[2] == '0' && m0 == '0' && m1 == '0' {
		return append(dst, 'Z', '"')
	}
	return append(dst, off[0], off[1], off[2], ':', m0, m1, '"')
}

// ArrayEncoder returns an Encoder that turns PostgreSQL's array text output
// into a JSON array (nested for multi-dimensional arrays), encoding each
// element with elem (a nil elem encodes elements as strings). delim is the
// element type's typdelim: ',' for every type but box, which uses ';'. Text
// that is not a well-formed array literal is emitted whole as a JSON string.
func ArrayEncoder(elem Encoder, delim byte) Encoder {
	if elem == nil {
		elem = AppendString
	}
	return func(dst, text []byte) []byte {
		return appendArray(dst, text, elem, delim)
	}
}

// appendArray parses iteratively, so that deeply nested input cannot exhaust
// the stack, and writes as it parses; on a syntax error it truncates dst back
// to where it started and writes the text as a string instead.
func appendArray(dst, text []byte, elem Encoder, delim byte) []byte {
	start := len(dst)
	i := skipBounds(text)
	if i < 0 || i >= len(text) || text[i] != '{' {
		return AppendString(dst, text)
	}
	depth := 0
	for {
		// An element is expected at text[i].
		if i >= len(text) {
			return AppendString(dst[:start], text)
		}
		switch c := text[i]; {
		case c == '{':
			dst = append(dst, '[')
			depth++
			i++
			if i < len(text) && text[i] == '}' {
				// Only an opening brace may be followed directly by a closing
				// one; elsewhere an empty element is a syntax error.
				dst = append(dst, ']')
				depth--
				i++
				break
			}
			continue
		case c == '"':
			j := i + 1
			escaped := false
			for j < len(text) && text[j] != '"' {
				if text[j] == '\\' {
					escaped = true
					j++
				}
				j++
			}
			if j >= len(text) {
				return AppendString(dst[:start], text)
			}
			if escaped {
				dst = appendUnescaped(dst, text[i+1:j], elem)
			} else {
				dst = elem(dst, text[i+1:j])
			}
			i = j + 1
		default:
			j := i
			for j < len(text) && text[j] != delim && text[j] != '}' {
				if c := text[j]; c == '{' || c == '"' || c == '\\' {
					return AppendString(dst[:start], text)
				}
				j++
			}
			if j == i {
				return AppendString(dst[:start], text)
			}
			if isNull(text[i:j]) {
				dst = append(dst, "null"...)
			} else {
				dst = elem(dst, text[i:j])
			}
			i = j
		}
		// After an element: closing braces, then a delimiter or the end.
		for depth > 0 && i < len(text) && text[i] == '}' {
			dst = append(dst, ']')
			depth--
			i++
		}
		if depth == 0 {
			if i != len(text) {
				return AppendString(dst[:start], text)
			}
			return dst
		}
		if i >= len(text) || text[i] != delim {
			return AppendString(dst[:start], text)
		}
		dst = append(dst, ',')
		i++
	}
}

// appendUnescaped encodes a quoted array element that contains backslash
// escapes. The unescaped bytes are staged in dst's own spare capacity, past
// the output, so that no scratch buffer is allocated: elem appends after the
// staged bytes (or into a new array if it grows dst, leaving them intact), and
// its output is then moved down over them.
func appendUnescaped(dst, quoted []byte, elem Encoder) []byte {
	n := len(dst)
	for i := 0; i < len(quoted); i++ {
		if quoted[i] == '\\' {
			i++ // the scan in appendArray guarantees a byte follows
		}
		dst = append(dst, quoted[i])
	}
	m := len(dst)
	dst = elem(dst, dst[n:m:m])
	copy(dst[n:], dst[m:])
	return dst[:len(dst)-(m-n)]
}

// isNull reports whether an unquoted element is the NULL marker, which array
// input matches case-insensitively; array output quotes any element that would
// collide with it.
func isNull(b []byte) bool {
	return len(b) == 4 && b[0]|0x20 == 'n' && b[1]|0x20 == 'u' && b[2]|0x20 == 'l' && b[3]|0x20 == 'l'
}

// skipBounds returns the index after an explicit dimensions prefix such as
// "[0:1][-2:3]=", which array output adds when a lower bound is not 1, 0 if
// there is none, or -1 if the prefix is malformed. JSON arrays have no lower
// bounds, so the prefix is dropped.
func skipBounds(text []byte) int {
	if len(text) == 0 || text[0] != '[' {
		return 0
	}
	i := 0
	for i < len(text) && text[i] == '[' {
		i++
		for k := 0; k < 2; k++ {
			if i < len(text) && text[i] == '-' {
				i++
			}
			j := skipDigits(text, i)
			if j == i {
				return -1
			}
			i = j
			sep := byte(':')
			if k == 1 {
				sep = ']'
			}
			if i >= len(text) || text[i] != sep {
				return -1
			}
			i++
		}
	}
	if i >= len(text) || text[i] != '=' {
		return -1
	}
	return i + 1
}
