package change

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

// Encoders built as cdc builds them from the catalog, for the tests below.
var (
	intEnc     = EncoderFor(pgtype.Int4OID)
	textEnc    = EncoderFor(pgtype.TextOID)
	pairEnc    = CompositeEncoder([]Field{{Name: "n", Enc: intEnc}, {Name: "s", Enc: textEnc}})
	nestedEnc  = CompositeEncoder([]Field{{Name: "id", Enc: intEnc}, {Name: "pair", Enc: pairEnc}, {Name: "tags", Enc: EncoderFor(pgtype.TextArrayOID)}})
	pairsEnc   = ArrayEncoder(pairEnc, ',')
	boxesEnc   = ArrayEncoder(nil, ';')
	moodsEnc   = ArrayEncoder(AppendString, ',')
	quotedName = CompositeEncoder([]Field{{Name: `we"ird`, Enc: nil}})
	emptyEnc   = CompositeEncoder(nil)
)

var compoundCases = []struct {
	name string
	enc  Encoder
	in   string
	want string
}{
	{"composite", pairEnc, `(1,abc)`, `{"n":1,"s":"abc"}`},
	{"composite nulls", pairEnc, `(,)`, `{"n":null,"s":null}`},
	{"composite empty string is not null", pairEnc, `(1,"")`, `{"n":1,"s":""}`},
	{"composite quoted with specials", pairEnc, `(2,"a, (b) \"c\" \\d")`, `{"n":2,"s":"a, (b) \"c\" \\d"}`},
	{"composite doubled quotes", pairEnc, `(2,"say ""hi""")`, `{"n":2,"s":"say \"hi\""}`},
	{"composite mixed quoting", pairEnc, `(2,a"b,c"d)`, `{"n":2,"s":"ab,cd"}`},
	{"composite backslash outside quotes", pairEnc, `(2,a\,b)`, `{"n":2,"s":"a,b"}`},
	{"composite number field that is not a number", pairEnc, `(x,y)`, `{"n":"x","s":"y"}`},
	{"composite nested", nestedEnc, `(7,"(1,""x y"")","{a,""b c""}")`, `{"id":7,"pair":{"n":1,"s":"x y"},"tags":["a","b c"]}`},
	{"composite nested null", nestedEnc, `(7,,)`, `{"id":7,"pair":null,"tags":null}`},
	{"composite key escaped", quotedName, `(v)`, `{"we\"ird":"v"}`},
	{"composite no fields", emptyEnc, `()`, `{}`},
	{"composite one null field", CompositeEncoder([]Field{{Name: "a"}}), `()`, `{"a":null}`},
	{"composite too few fields", pairEnc, `(1)`, `"(1)"`},
	{"composite too many fields", pairEnc, `(1,a,b)`, `"(1,a,b)"`},
	{"composite no parens", pairEnc, `1,a`, `"1,a"`},
	{"composite trailing text", pairEnc, `(1,a)x`, `"(1,a)x"`},
	{"composite paren inside field", pairEnc, `(1,a)b)`, `"(1,a)b)"`},
	{"composite unterminated quote", pairEnc, `(1,"a)`, `"(1,\"a)"`},
	{"composite escaped closing paren", pairEnc, `(1,a\)`, `"(1,a\\)"`},
	{"composite empty text", pairEnc, ``, `""`},
	{"composite no fields but values", emptyEnc, `(1)`, `"(1)"`},
	{"array of composites", pairsEnc, `{"(1,a)","(2,\"b c\")",NULL}`, `[{"n":1,"s":"a"},{"n":2,"s":"b c"},null]`},
	{"array of composites two dims", pairsEnc, `{{"(1,a)"},{"(2,)"}}`, `[[{"n":1,"s":"a"}],[{"n":2,"s":null}]]`},
	{"array of composites bad element", pairsEnc, `{"(1,a,b)"}`, `["(1,a,b)"]`},
	{"array with semicolons", boxesEnc, `{(1,1),(0,0);(3,3),(2,2)}`, `["(1,1),(0,0)","(3,3),(2,2)"]`},
	{"array with semicolons quoted", boxesEnc, `{"a;b";NULL;"x\"y"}`, `["a;b",null,"x\"y"]`},
	{"array with semicolons two dims", boxesEnc, `{{a;b};{c;d}}`, `[["a","b"],["c","d"]]`},
	{"array with semicolons and a comma delimiter", boxesEnc, `{a;b},{c}`, `"{a;b},{c}"`},
	{"enum array", moodsEnc, `{sad,happy,NULL}`, `["sad","happy",null]`},
	{"nil element encoder is string", ArrayEncoder(nil, ','), `{1,2}`, `["1","2"]`},
}

func TestCompoundEncoders(t *testing.T) {
	for _, tc := range compoundCases {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.enc(nil, []byte(tc.in))
			if string(got) != tc.want {
				t.Fatalf("encode(%q) = %s, want %s", tc.in, got, tc.want)
			}
			if !json.Valid(got) {
				t.Fatalf("encode(%q) = %s, not valid JSON", tc.in, got)
			}
			// Unescaped fields are staged in dst's spare capacity: the result
			// must not depend on what dst holds or on whether it has room.
			for _, spare := range []int{0, 1, 16, 4096} {
				dst := append(make([]byte, 0, len("prefix")+spare), "prefix"...)
				junk := dst[len(dst):cap(dst)]
				for i := range junk {
					junk[i] = '#'
				}
				if got := tc.enc(dst, []byte(tc.in)); string(got) != "prefix"+tc.want {
					t.Fatalf("encode(%q) with %d spare = %s, want prefix%s", tc.in, spare, got, tc.want)
				}
			}
		})
	}
}

func TestCompoundEncodersAllocs(t *testing.T) {
	for _, tc := range []struct {
		name string
		enc  Encoder
		in   string
	}{
		{"composite", pairEnc, `(2,"a, (b) \"c\"")`},
		{"nested composite", nestedEnc, `(7,"(1,""x y"")","{a,""b c""}")`},
		{"array of composites", pairsEnc, `{"(1,a)","(2,\"b c\")"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dst := make([]byte, 0, 1024)
			in := []byte(tc.in)
			allocs := testing.AllocsPerRun(100, func() { dst = tc.enc(dst[:0], in) })
			if allocs != 0 {
				t.Fatalf("encode(%q) allocates %v times, want 0", tc.in, allocs)
			}
		})
	}
}

// recordOut quotes a field as PostgreSQL's record_out does.
func recordOut(fields []*string) string {
	var b strings.Builder
	b.WriteByte('(')
	for i, f := range fields {
		if i > 0 {
			b.WriteByte(',')
		}
		if f == nil {
			continue
		}
		if *f != "" && !strings.ContainsAny(*f, "\"\\(), \t\n\r\v\f") {
			b.WriteString(*f)
			continue
		}
		b.WriteByte('"')
		for _, c := range []byte(*f) {
			if c == '"' || c == '\\' {
				b.WriteByte(c)
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte(')')
	return b.String()
}

// arrayOut quotes an element as PostgreSQL's array_out does.
func arrayOut(elems []string, delim byte) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, e := range elems {
		if i > 0 {
			b.WriteByte(delim)
		}
		if e != "" && !strings.EqualFold(e, "NULL") && !strings.ContainsAny(e, "{}\"\\ \t\n\r\v\f"+string(delim)) {
			b.WriteString(e)
			continue
		}
		b.WriteByte('"')
		for _, c := range []byte(e) {
			if c == '"' || c == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(c)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// FuzzCompound checks the array and composite parsers two ways: values
// quoted as PostgreSQL quotes them come back exactly, in an array of
// composites too; and arbitrary text never panics, always yields valid JSON,
// leaves the input alone and does not depend on dst.
func FuzzCompound(f *testing.F) {
	for _, tc := range compoundCases {
		f.Add(tc.in, "x", false)
	}
	f.Add(`a "b" \c`, `(,)`, true)
	f.Fuzz(func(t *testing.T, a, b string, nullA bool) {
		// Round trip through record_out and array_out quoting.
		var fa *string
		if !nullA {
			fa = &a
		}
		rec := recordOut([]*string{fa, &b})
		twoText := CompositeEncoder([]Field{{Name: "a"}, {Name: "b"}})
		arr := arrayOut([]string{rec, rec}, ',')
		got := ArrayEncoder(twoText, ',')(nil, []byte(arr))
		var back []map[string]*string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("encode(%q) = %s, not an array of objects: %v", arr, got, err)
		}
		want := func(s *string) *string {
			if s == nil {
				return nil
			}
			// JSON carries valid UTF-8 only; AppendString replaces the rest.
			var v string
			_ = json.Unmarshal(AppendString(nil, []byte(*s)), &v)
			return &v
		}
		for _, m := range back {
			if ga, wa := m["a"], want(fa); (ga == nil) != (wa == nil) || (ga != nil && *ga != *wa) {
				t.Fatalf("encode(%q): a = %v, want %v", arr, ga, wa)
			}
			if gb, wb := m["b"], want(&b); gb == nil || *gb != *wb {
				t.Fatalf("encode(%q): b = %v, want %q", arr, gb, *wb)
			}
		}
		semi := arrayOut([]string{a, b}, ';')
		var elems []string
		if err := json.Unmarshal(ArrayEncoder(nil, ';')(nil, []byte(semi)), &elems); err != nil || len(elems) != 2 || elems[0] != *want(&a) || elems[1] != *want(&b) {
			t.Fatalf("encode(%q) = %q, %v; want [%q %q]", semi, elems, err, a, b)
		}

		// Arbitrary text.
		for _, enc := range []Encoder{pairEnc, nestedEnc, pairsEnc, boxesEnc, emptyEnc} {
			for _, in := range []string{a, b} {
				text := []byte(in)
				orig := bytes.Clone(text)
				got := enc(nil, text)
				if !bytes.Equal(text, orig) {
					t.Fatalf("encode(%q) modified its input", orig)
				}
				if !json.Valid(got) {
					t.Fatalf("encode(%q) = %s, not valid JSON", text, got)
				}
				dst := append(make([]byte, 0, 8+2*len(text)), "prefix"...)
				for i := len(dst); i < cap(dst); i++ {
					dst[:cap(dst)][i] = '"'
				}
				if got2 := enc(dst, text); string(got2) != "prefix"+string(got) {
					t.Fatalf("encode(%q) = %s with a prefix, %s without", text, got2, got)
				}
			}
		}
	})
}

func BenchmarkCompound(b *testing.B) {
	for _, bc := range []struct {
		name string
		enc  Encoder
		in   string
	}{
		{"composite", pairEnc, `(12345,"hello, world")`},
		{"nested composite", nestedEnc, `(7,"(1,""x y"")","{a,""b c""}")`},
		{"array of composites", pairsEnc, `{"(1,a)","(2,\"b c\")","(3,d)"}`},
		{"enum array", moodsEnc, `{sad,ok,happy,NULL}`},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := []byte(bc.in)
			var dst []byte
			b.ReportAllocs()
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				dst = bc.enc(dst[:0], in)
			}
		})
	}
}

func TestRecordFields(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int
	}{
		{`()`, 0},
		{`(1)`, 1},
		{`(,)`, 2},
		{`(1,"a,b",)`, 3},
		{`(1,"(2,3)")`, 2},
		{`(1,a)b)`, -1},
		{`(1`, -1},
		{`1,2`, -1},
		{``, -1},
		{`(a\)`, -1},
	} {
		if got := RecordFields([]byte(tc.in)); got != tc.want {
			t.Errorf("RecordFields(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}
