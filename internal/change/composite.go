package change

// Field is one attribute of a composite type, in attribute order, without
// dropped attributes (record output leaves them out too).
type Field struct {
	Name string
	Enc  Encoder // nil encodes the field as a string
}

// CompositeEncoder returns an Encoder that turns a composite value's text
// output, "(1,\"a b\",)", into a JSON object with the fields' names as keys,
// each value in its own type's JSON form, an empty field as null. Text that
// is not a well-formed record literal with exactly len(fields) fields (the
// type was altered after the value was written, say) is emitted whole as a
// JSON string, so a value is never attributed to the wrong field.
//
// Field keys are escaped once here, so encoding a value allocates nothing.
func CompositeEncoder(fields []Field) Encoder {
	c := &composite{keys: make([][]byte, len(fields)), encs: make([]Encoder, len(fields))}
	for i, f := range fields {
		key := AppendString(nil, []byte(f.Name))
		c.keys[i] = append(key, ':')
		c.encs[i] = f.Enc
		if c.encs[i] == nil {
			c.encs[i] = AppendString
		}
	}
	return c.append
}

type composite struct {
	keys [][]byte // `"name":`
	encs []Encoder
}

// append parses record_out's grammar as record_in reads it: fields are
// separated by commas between parentheses; a field is empty (NULL) or a run
// of characters in which double quotes open and close quoted stretches,
// a backslash escapes the next character, and inside quotes a doubled quote
// stands for one. Like appendArray it writes as it parses and falls back to
// the whole text as a string on any error.
func (c *composite) append(dst, text []byte) []byte {
	start := len(dst)
	if len(text) < 2 || text[0] != '(' || text[len(text)-1] != ')' {
		return AppendString(dst, text)
	}
	if len(c.keys) == 0 {
		if len(text) != 2 {
			return AppendString(dst, text)
		}
		return append(dst, '{', '}')
	}
	dst = append(dst, '{')
	i := 1
	for f := 0; ; f++ {
		if f == len(c.keys) {
			return AppendString(dst[:start], text)
		}
		if f > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, c.keys[f]...)
		j, special := scanRecordField(text, i)
		if j < 0 {
			return AppendString(dst[:start], text)
		}
		switch {
		case j == i:
			dst = append(dst, "null"...)
		case special:
			dst = appendRecordUnescaped(dst, text[i:j], c.encs[f])
		default:
			dst = c.encs[f](dst, text[i:j])
		}
		if text[j] == ')' {
			if j != len(text)-1 || f != len(c.keys)-1 {
				return AppendString(dst[:start], text)
			}
			return append(dst, '}')
		}
		i = j + 1
	}
}

// scanRecordField returns the index of the ',' or ')' that ends the field
// starting at text[i], and whether the field holds quotes or backslashes to
// undo; -1 if the text ends first.
func scanRecordField(text []byte, i int) (int, bool) {
	special := false
	quoted := false
	for i < len(text) {
		switch c := text[i]; {
		case c == '\\':
			special = true
			i += 2
			continue
		case c == '"':
			special = true
			if quoted && i+1 < len(text) && text[i+1] == '"' {
				i += 2
				continue
			}
			quoted = !quoted
		case !quoted && (c == ',' || c == ')'):
			return i, special
		}
		i++
	}
	return -1, false
}

// appendRecordUnescaped encodes a field that scanRecordField found to need
// unescaping, staging the unescaped bytes in dst's spare capacity as
// appendUnescaped does for array elements.
func appendRecordUnescaped(dst, field []byte, enc Encoder) []byte {
	n := len(dst)
	quoted := false
	for i := 0; i < len(field); i++ {
		switch c := field[i]; {
		case c == '\\':
			i++ // scanRecordField guarantees a byte follows
			dst = append(dst, field[i])
		case c == '"':
			if quoted && i+1 < len(field) && field[i+1] == '"' {
				dst = append(dst, '"')
				i++
				continue
			}
			quoted = !quoted
		default:
			dst = append(dst, c)
		}
	}
	m := len(dst)
	dst = enc(dst, dst[n:m:m])
	copy(dst[n:], dst[m:])
	return dst[:len(dst)-(m-n)]
}

// RecordFields returns the number of fields in a composite value's text
// form, or -1 if text is not a well-formed record literal. The stream uses
// it to notice a composite type altered since it was looked up.
func RecordFields(text []byte) int {
	if len(text) < 2 || text[0] != '(' || text[len(text)-1] != ')' {
		return -1
	}
	if len(text) == 2 {
		// "()" is a record of no fields or of one NULL field; it cannot tell
		// which, so it fits either.
		return 0
	}
	n := 0
	for i := 1; ; n++ {
		j, _ := scanRecordField(text, i)
		if j < 0 {
			return -1
		}
		if text[j] == ')' {
			if j != len(text)-1 {
				return -1
			}
			return n + 1
		}
		i = j + 1
	}
}
