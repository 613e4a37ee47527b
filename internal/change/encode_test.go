package change

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgtype"
)

type encodeCase struct {
	name string
	oid  uint32
	in   string
	want string
}

var encodeCases = []encodeCase{
	// Integers and oid: verbatim.
	{"int2 min", pgtype.Int2OID, "-32768", `-32768`},
	{"int4", pgtype.Int4OID, "42", `42`},
	{"int4 zero", pgtype.Int4OID, "0", `0`},
	{"int8 max keeps every digit", pgtype.Int8OID, "9223372036854775807", `9223372036854775807`},
	{"oid max", pgtype.OIDOID, "4294967295", `4294967295`},
	{"int4 leading zero is not a JSON number", pgtype.Int4OID, "007", `"007"`},
	{"int4 garbage", pgtype.Int4OID, "12a", `"12a"`},
	{"int4 empty", pgtype.Int4OID, "", `""`},
	{"int4 lone minus", pgtype.Int4OID, "-", `"-"`},

	// numeric: exact digits, specials as strings.
	{"numeric exact", pgtype.NumericOID, "123456789012345678901234567890.000000000000000001", `123456789012345678901234567890.000000000000000001`},
	{"numeric negative fraction", pgtype.NumericOID, "-0.50", `-0.50`},
	{"numeric NaN", pgtype.NumericOID, "NaN", `"NaN"`},
	{"numeric Infinity", pgtype.NumericOID, "Infinity", `"Infinity"`},
	{"numeric -Infinity", pgtype.NumericOID, "-Infinity", `"-Infinity"`},
	{"numeric trailing dot", pgtype.NumericOID, "1.", `"1."`},

	// float4/float8: verbatim when JSON, normalised when merely decimal.
	{"float8 plain", pgtype.Float8OID, "1.5", `1.5`},
	{"float8 exponent plus", pgtype.Float8OID, "1e+20", `1e+20`},
	{"float8 exponent minus", pgtype.Float8OID, "1.5e-07", `1.5e-07`},
	{"float8 upper exponent", pgtype.Float8OID, "2E5", `2E5`},
	{"float8 negative zero", pgtype.Float8OID, "-0", `-0`},
	{"float4 shortest", pgtype.Float4OID, "0.1", `0.1`},
	{"float8 NaN", pgtype.Float8OID, "NaN", `"NaN"`},
	{"float8 Infinity", pgtype.Float8OID, "Infinity", `"Infinity"`},
	{"float4 -Infinity", pgtype.Float4OID, "-Infinity", `"-Infinity"`},
	{"float8 leading dot", pgtype.Float8OID, ".5", `0.5`},
	{"float8 negative leading dot", pgtype.Float8OID, "-.5e3", `-0.5e3`},
	{"float8 trailing dot", pgtype.Float8OID, "5.", `5`},
	{"float8 trailing dot exponent", pgtype.Float8OID, "5.e2", `5e2`},
	{"float8 plus sign", pgtype.Float8OID, "+1", `1`},
	{"float8 leading zeros", pgtype.Float8OID, "007.25", `7.25`},
	{"float8 all zeros", pgtype.Float8OID, "000", `0`},
	{"float8 dot only", pgtype.Float8OID, ".", `"."`},
	{"float8 dot exponent", pgtype.Float8OID, ".e5", `".e5"`},
	{"float8 missing exponent digits", pgtype.Float8OID, "1e", `"1e"`},
	{"float8 signed missing exponent digits", pgtype.Float8OID, "1e+", `"1e+"`},
	{"float8 trailing garbage", pgtype.Float8OID, "1.5x", `"1.5x"`},
	{"float8 hex", pgtype.Float8OID, "0x10", `"0x10"`},
	{"float8 empty", pgtype.Float8OID, "", `""`},

	// bool.
	{"bool true", pgtype.BoolOID, "t", `true`},
	{"bool false", pgtype.BoolOID, "f", `false`},
	{"bool spelled out", pgtype.BoolOID, "true", `"true"`},
	{"bool other letter", pgtype.BoolOID, "y", `"y"`},

	// Strings.
	{"text", pgtype.TextOID, "hello", `"hello"`},
	{"text empty", pgtype.TextOID, "", `""`},
	{"text quote and backslash", pgtype.TextOID, `a"b\c`, `"a\"b\\c"`},
	{"text short escapes", pgtype.TextOID, "\b\f\n\r\t", `"\b\f\n\r\t"`},
	{"text other controls", pgtype.TextOID, "\x00\x01\x1f", `"\u0000\u0001\u001f"`},
	{"text DEL stays literal", pgtype.TextOID, "\x7f", "\"\x7f\""},
	{"text html stays literal", pgtype.TextOID, "<a>&</a>", `"<a>&</a>"`},
	{"text line separators stay literal", pgtype.TextOID, "\u2028\u2029", "\"\u2028\u2029\""},
	{"text multibyte", pgtype.TextOID, "héllo 世界 🎉", `"héllo 世界 🎉"`},
	{"text invalid byte", pgtype.TextOID, "a\xffb", "\"a\uFFFDb\""},
	{"text each invalid byte replaced", pgtype.TextOID, "\xc3\x28\xe2\x82", "\"\uFFFD(\uFFFD\uFFFD\""},
	{"text truncated rune at end", pgtype.TextOID, "ok\xe4\xb8", "\"ok\uFFFD\uFFFD\""},
	{"text surrogate half", pgtype.TextOID, "\xed\xa0\x80", "\"\uFFFD\uFFFD\uFFFD\""},
	{"varchar", pgtype.VarcharOID, "v", `"v"`},
	{"bpchar keeps padding", pgtype.BPCharOID, "ab  ", `"ab  "`},
	{"name", pgtype.NameOID, "pg_class", `"pg_class"`},
	{"char", pgtype.QCharOID, "x", `"x"`},
	{"uuid", pgtype.UUIDOID, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", `"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"`},
	{"inet", pgtype.InetOID, "192.168.0.1/24", `"192.168.0.1/24"`},
	{"cidr", pgtype.CIDROID, "10.0.0.0/8", `"10.0.0.0/8"`},
	{"macaddr", pgtype.MacaddrOID, "08:00:2b:01:02:03", `"08:00:2b:01:02:03"`},
	{"time", pgtype.TimeOID, "03:04:05.5", `"03:04:05.5"`},
	{"timetz", pgtype.TimetzOID, "03:04:05+00", `"03:04:05+00"`},
	{"interval", pgtype.IntervalOID, "1 year 2 mons 3 days 04:05:06", `"1 year 2 mons 3 days 04:05:06"`},
	{"money", 790, "$1,234.56", `"$1,234.56"`},
	{"xml", pgtype.XMLOID, `<a x="1"/>`, `"<a x=\"1\"/>"`},
	{"tsvector", pgtype.TSVectorOID, "'a':1 'b':2", `"'a':1 'b':2"`},
	{"unknown oid (enum)", 16384, "happy", `"happy"`},

	// json, jsonb: embedded.
	{"json object", pgtype.JSONOID, `{"a": [1, 2.50]}`, `{"a": [1, 2.50]}`},
	{"json scalar string", pgtype.JSONOID, `"s"`, `"s"`},
	{"jsonb null", pgtype.JSONBOID, `null`, `null`},
	{"jsonb object", pgtype.JSONBOID, `{"a": 1, "b": true}`, `{"a": 1, "b": true}`},

	// bytea.
	{"bytea empty", pgtype.ByteaOID, `\x`, `""`},
	{"bytea one byte", pgtype.ByteaOID, `\x00`, `"AA=="`},
	{"bytea two bytes", pgtype.ByteaOID, `\x0a0b`, `"Cgs="`},
	{"bytea three bytes", pgtype.ByteaOID, `\x666f6f`, `"Zm9v"`},
	{"bytea four bytes", pgtype.ByteaOID, `\xdeadbeef`, `"3q2+7w=="`},
	{"bytea five bytes", pgtype.ByteaOID, `\x666f6f6261`, `"Zm9vYmE="`},
	{"bytea upper hex", pgtype.ByteaOID, `\xDEADBEEF`, `"3q2+7w=="`},
	{"bytea all base64 digits", pgtype.ByteaOID, `\x00108310518720928b30d38f41149351559761969b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3dfbf`, `"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"`},
	{"bytea odd digits", pgtype.ByteaOID, `\x0`, `"\\x0"`},
	{"bytea bad digit in group", pgtype.ByteaOID, `\x66zz6f`, `"\\x66zz6f"`},
	{"bytea bad last digit of group", pgtype.ByteaOID, `\x666f6z`, `"\\x666f6z"`},
	{"bytea bad digit in two-byte tail", pgtype.ByteaOID, `\x666f6f62g1`, `"\\x666f6f62g1"`},
	{"bytea bad last digit of two-byte tail", pgtype.ByteaOID, `\x666f6f626z`, `"\\x666f6f626z"`},
	{"bytea bad last digit of one-byte tail", pgtype.ByteaOID, `\x666f6f6z`, `"\\x666f6f6z"`},
	{"bytea escape format", pgtype.ByteaOID, `abc\000`, `"abc\\000"`},
	{"bytea no x", pgtype.ByteaOID, `\y00`, `"\\y00"`},

	// date: as sent.
	{"date", pgtype.DateOID, "2024-01-02", `"2024-01-02"`},
	{"date infinity", pgtype.DateOID, "infinity", `"infinity"`},
	{"date BC", pgtype.DateOID, "0044-03-15 BC", `"0044-03-15 BC"`},

	// timestamptz.
	{"timestamptz utc fraction", pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+00", `"2024-01-02T03:04:05.123456Z"`},
	{"timestamptz utc", pgtype.TimestamptzOID, "2024-01-02 03:04:05+00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz utc long offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05+00:00", `"2024-01-02T03:04:05Z"`},
	{"timestamptz half hour offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05.5+05:30", `"2024-01-02T03:04:05.5+05:30"`},
	{"timestamptz hour offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05+05", `"2024-01-02T03:04:05+05:00"`},
	{"timestamptz negative offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05-08", `"2024-01-02T03:04:05-08:00"`},
	{"timestamptz minus zero", pgtype.TimestamptzOID, "2024-01-02 03:04:05-00", `"2024-01-02T03:04:05-00:00"`},
	{"timestamptz offset seconds", pgtype.TimestamptzOID, "1850-01-01 00:00:00+05:53:28", `"1850-01-01 00:00:00+05:53:28"`},
	{"timestamptz infinity", pgtype.TimestamptzOID, "infinity", `"infinity"`},
	{"timestamptz -infinity", pgtype.TimestamptzOID, "-infinity", `"-infinity"`},
	{"timestamptz BC", pgtype.TimestamptzOID, "0044-03-15 10:00:00+00 BC", `"0044-03-15 10:00:00+00 BC"`},
	{"timestamptz five digit year", pgtype.TimestamptzOID, "10000-01-01 00:00:00+00", `"10000-01-01 00:00:00+00"`},
	{"timestamptz no offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05", `"2024-01-02 03:04:05"`},
	{"timestamptz empty fraction", pgtype.TimestamptzOID, "2024-01-02 03:04:05.+00", `"2024-01-02 03:04:05.+00"`},
	{"timestamptz one digit offset", pgtype.TimestamptzOID, "2024-01-02 03:04:05+0", `"2024-01-02 03:04:05+0"`},
	{"timestamptz bad offset minutes", pgtype.TimestamptzOID, "2024-01-02 03:04:05+05:3x", `"2024-01-02 03:04:05+05:3x"`},
	{"timestamptz bad offset separator", pgtype.TimestamptzOID, "2024-01-02 03:04:05+05-30", `"2024-01-02 03:04:05+05-30"`},
	{"timestamptz bad offset sign", pgtype.TimestamptzOID, "2024-01-02 03:04:05 05", `"2024-01-02 03:04:05 05"`},
	{"timestamptz T separator", pgtype.TimestamptzOID, "2024-01-02T03:04:05+00", `"2024-01-02T03:04:05+00"`},
	{"timestamptz letter in date", pgtype.TimestamptzOID, "2024-0a-02 03:04:05+00", `"2024-0a-02 03:04:05+00"`},
	{"timestamptz short", pgtype.TimestamptzOID, "2024-01-02", `"2024-01-02"`},

	// timestamp.
	{"timestamp fraction", pgtype.TimestampOID, "2024-01-02 03:04:05.5", `"2024-01-02T03:04:05.5"`},
	{"timestamp", pgtype.TimestampOID, "2024-01-02 03:04:05", `"2024-01-02T03:04:05"`},
	{"timestamp with offset", pgtype.TimestampOID, "2024-01-02 03:04:05+00", `"2024-01-02 03:04:05+00"`},
	{"timestamp infinity", pgtype.TimestampOID, "infinity", `"infinity"`},
	{"timestamp BC", pgtype.TimestampOID, "0044-03-15 10:00:00 BC", `"0044-03-15 10:00:00 BC"`},

	// Arrays.
	{"int4 array", pgtype.Int4ArrayOID, "{1,2,3}", `[1,2,3]`},
	{"int4 array empty", pgtype.Int4ArrayOID, "{}", `[]`},
	{"int4 array two dims", pgtype.Int4ArrayOID, "{{1,2},{3,4}}", `[[1,2],[3,4]]`},
	{"int4 array three dims", pgtype.Int4ArrayOID, "{{{1}},{{2}}}", `[[[1]],[[2]]]`},
	{"int4 array nulls", pgtype.Int4ArrayOID, "{NULL,2,NULL}", `[null,2,null]`},
	{"int4 array lower-case null", pgtype.Int4ArrayOID, "{null,Null}", `[null,null]`},
	{"int4 array lower bound", pgtype.Int4ArrayOID, "[0:1]={1,2}", `[1,2]`},
	{"int4 array negative bounds two dims", pgtype.Int4ArrayOID, "[-1:0][2:3]={{1,2},{3,4}}", `[[1,2],[3,4]]`},
	{"int2 array", pgtype.Int2ArrayOID, "{-1,0}", `[-1,0]`},
	{"int8 array", pgtype.Int8ArrayOID, "{9223372036854775807}", `[9223372036854775807]`},
	{"oid array", pgtype.OIDArrayOID, "{1,4294967295}", `[1,4294967295]`},
	{"numeric array", pgtype.NumericArrayOID, "{1.50,NaN,-Infinity}", `[1.50,"NaN","-Infinity"]`},
	{"float4 array", pgtype.Float4ArrayOID, "{0.1,NaN}", `[0.1,"NaN"]`},
	{"float8 array", pgtype.Float8ArrayOID, "{1e+20,Infinity,-0}", `[1e+20,"Infinity",-0]`},
	{"bool array", pgtype.BoolArrayOID, "{t,f,NULL}", `[true,false,null]`},
	{"text array", pgtype.TextArrayOID, "{a,b}", `["a","b"]`},
	{"text array quoted NULL is a string", pgtype.TextArrayOID, `{"NULL",NULL}`, `["NULL",null]`},
	{"text array near-NULL words are strings", pgtype.TextArrayOID, "{NUL,xULL,NxLL,NUxL,NULx,NULLx}", `["NUL","xULL","NxLL","NUxL","NULx","NULLx"]`},
	{"text array escapes", pgtype.TextArrayOID, `{"a\"b","c\\d"}`, `["a\"b","c\\d"]`},
	{"text array specials", pgtype.TextArrayOID, `{"a,b","{x}"," s ",""}`, `["a,b","{x}"," s ",""]`},
	{"text array escaped last", pgtype.TextArrayOID, `{x,"\\"}`, `["x","\\"]`},
	{"text array control and invalid utf8", pgtype.TextArrayOID, "{\"a\tb\",\xff}", "[\"a\\tb\",\"\uFFFD\"]"},
	{"text array two dims", pgtype.TextArrayOID, `{{a,"b c"},{"",NULL}}`, `[["a","b c"],["",null]]`},
	{"varchar array", pgtype.VarcharArrayOID, "{x}", `["x"]`},
	{"bpchar array", pgtype.BPCharArrayOID, `{"a  ",b}`, `["a  ","b"]`},
	{"name array", pgtype.NameArrayOID, "{pg_class}", `["pg_class"]`},
	{"uuid array", pgtype.UUIDArrayOID, "{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11,NULL}", `["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",null]`},
	{"json array", pgtype.JSONArrayOID, `{"{\"a\":1}","[1, 2]",3,NULL}`, `[{"a":1},[1, 2],3,null]`},
	{"jsonb array", pgtype.JSONBArrayOID, `{"{\"a\": \"x\\\\y\"}",true}`, `[{"a": "x\\y"},true]`},
	{"date array", pgtype.DateArrayOID, "{2024-01-02,infinity}", `["2024-01-02","infinity"]`},
	{"timestamptz array", pgtype.TimestamptzArrayOID, `{"2024-01-02 03:04:05+00","2024-01-02 03:04:05.5+05:30",infinity}`, `["2024-01-02T03:04:05Z","2024-01-02T03:04:05.5+05:30","infinity"]`},
	{"timestamp array", pgtype.TimestampArrayOID, `{"2024-01-02 03:04:05.25",NULL}`, `["2024-01-02T03:04:05.25",null]`},
	{"bytea array", pgtype.ByteaArrayOID, `{"\\x0a0b","\\x",NULL}`, `["Cgs=","",null]`},
	{"bytea array bad element", pgtype.ByteaArrayOID, `{"\\xzz"}`, `["\\xzz"]`},
	{"interval array", pgtype.IntervalArrayOID, `{"1 day","-00:00:01"}`, `["1 day","-00:00:01"]`},
	{"unknown array oid", pgtype.BoxArrayOID, "{(1,1),(0,0);(2,2),(1,1)}", `"{(1,1),(0,0);(2,2),(1,1)}"`},

	// Malformed arrays fall back to the whole text as a string.
	{"array empty text", pgtype.Int4ArrayOID, "", `""`},
	{"array no braces", pgtype.Int4ArrayOID, "1,2", `"1,2"`},
	{"array unclosed", pgtype.Int4ArrayOID, "{1,2", `"{1,2"`},
	{"array open only", pgtype.Int4ArrayOID, "{", `"{"`},
	{"array trailing comma", pgtype.Int4ArrayOID, "{1,}", `"{1,}"`},
	{"array empty element", pgtype.Int4ArrayOID, "{1,,2}", `"{1,,2}"`},
	{"array lone comma", pgtype.Int4ArrayOID, "{,}", `"{,}"`},
	{"array trailing text", pgtype.Int4ArrayOID, "{1}x", `"{1}x"`},
	{"array extra close", pgtype.Int4ArrayOID, "{1}}", `"{1}}"`},
	{"array missing comma between dims", pgtype.Int4ArrayOID, "{{1}{2}}", `"{{1}{2}}"`},
	{"array unterminated quote", pgtype.TextArrayOID, `{"a}`, `"{\"a}"`},
	{"array trailing backslash", pgtype.TextArrayOID, `{"a\`, `"{\"a\\"`},
	{"array escaped closing quote", pgtype.TextArrayOID, `{"a\"}`, `"{\"a\\\"}"`},
	{"array text after quote", pgtype.TextArrayOID, `{"a"b}`, `"{\"a\"b}"`},
	{"array quote inside unquoted", pgtype.TextArrayOID, `{a"b}`, `"{a\"b}"`},
	{"array backslash inside unquoted", pgtype.TextArrayOID, `{a\b}`, `"{a\\b}"`},
	{"array brace inside unquoted", pgtype.TextArrayOID, `{a{b}`, `"{a{b}"`},
	{"array error after escaped element", pgtype.TextArrayOID, `{"a\"b",`, `"{\"a\\\"b\","`},
	{"array bounds without equals", pgtype.Int4ArrayOID, "[0:1]{1,2}", `"[0:1]{1,2}"`},
	{"array bounds unclosed", pgtype.Int4ArrayOID, "[0:1={1,2}", `"[0:1={1,2}"`},
	{"array bounds not numbers", pgtype.Int4ArrayOID, "[a:1]={1}", `"[a:1]={1}"`},
	{"array bounds missing upper", pgtype.Int4ArrayOID, "[0:]={1}", `"[0:]={1}"`},
	{"array bounds only", pgtype.Int4ArrayOID, "[0:1]=", `"[0:1]="`},
}

func TestAppendJSON(t *testing.T) {
	for _, tc := range encodeCases {
		t.Run(tc.name, func(t *testing.T) {
			enc := EncoderFor(tc.oid)
			in := fmt.Sprintf("%d, %q", tc.oid, tc.in)
			got := AppendJSON(nil, enc, Datum{Kind: Text, Text: []byte(tc.in)})
			if string(got) != tc.want {
				t.Fatalf("AppendJSON(%s) = %s, want %s", in, got, tc.want)
			}
			if !json.Valid(got) {
				t.Fatalf("AppendJSON(%s) = %s, not valid JSON", in, got)
			}
			// The array encoder stages unescaped elements in dst's spare
			// capacity, so the result must not depend on what dst holds or on
			// whether it has room.
			for _, spare := range []int{0, 1, 64, 4096} {
				dst := make([]byte, 0, len("prefix")+spare)
				dst = append(dst, "prefix"...)
				junk := dst[len(dst):cap(dst)]
				for i := range junk {
					junk[i] = '#'
				}
				got := AppendJSON(dst, enc, Datum{Kind: Text, Text: []byte(tc.in)})
				if want := "prefix" + tc.want; string(got) != want {
					t.Fatalf("AppendJSON(%s) with %d spare = %s, want %s", in, spare, got, want)
				}
			}
		})
	}
}

func TestAppendJSONKinds(t *testing.T) {
	cases := []struct {
		name string
		enc  Encoder
		d    Datum
		want string
	}{
		{"null", EncoderFor(pgtype.Int4OID), Datum{Kind: Null}, `x:null`},
		{"null ignores text", EncoderFor(pgtype.TextOID), Datum{Kind: Null, Text: []byte("t")}, `x:null`},
		{"unchanged appends nothing", EncoderFor(pgtype.TextOID), Datum{Kind: Unchanged, Text: []byte("t")}, `x:`},
		{"zero kind is null", EncoderFor(pgtype.TextOID), Datum{Text: []byte("t")}, `x:null`},
		{"binary kind is null", EncoderFor(pgtype.TextOID), Datum{Kind: 'b', Text: []byte("t")}, `x:null`},
		{"text uses encoder", EncoderFor(pgtype.BoolOID), Datum{Kind: Text, Text: []byte("t")}, `x:true`},
		{"nil encoder is string", nil, Datum{Kind: Text, Text: []byte("7")}, `x:"7"`},
		{"nil text is empty string", EncoderFor(pgtype.TextOID), Datum{Kind: Text}, `x:""`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendJSON([]byte("x:"), tc.enc, tc.d)
			if string(got) != tc.want {
				t.Fatalf("AppendJSON(%s) = %s, want %s", fmt.Sprintf("%c %q", tc.d.Kind, tc.d.Text), got, tc.want)
			}
		})
	}
}

// TestAppendStringMatchesEncodingJSON checks the escaping against the standard
// library on inputs built to hit every byte value, so a gap in the escape
// table shows up as a decoding difference.
func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	var all []byte
	for c := 0; c < 256; c++ {
		all = append(all, byte(c), 'a')
	}
	cases := []struct {
		name string
		in   string
	}{
		{"every byte", string(all)},
		{"every ascii byte", string(all[:256])},
		{"mixed utf8", "x\u00e9\u4e16\U0001F389\ufffd\xff\xc0\x80"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := AppendString(nil, []byte(tc.in))
			want, err := json.Marshal(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			var gotS, wantS string
			if err := json.Unmarshal(got, &gotS); err != nil {
				t.Fatalf("AppendString(%q) = %s, invalid: %v", tc.in, got, err)
			}
			if err := json.Unmarshal(want, &wantS); err != nil {
				t.Fatal(err)
			}
			if gotS != wantS {
				t.Fatalf("AppendString(%q) = %s, want %s", tc.in, got, want)
			}
		})
	}
}

// TestAppendJSONAllocs pins the hot-path promise: with room in dst, encoding
// allocates nothing, including arrays whose elements need unescaping.
func TestAppendJSONAllocs(t *testing.T) {
	cases := []struct {
		name string
		oid  uint32
		in   string
	}{
		{"int", pgtype.Int8OID, "9223372036854775807"},
		{"numeric", pgtype.NumericOID, "-12345.6789"},
		{"float", pgtype.Float8OID, ".5"},
		{"text", pgtype.TextOID, "a \"quoted\"\n\xff line"},
		{"bytea", pgtype.ByteaOID, `\xdeadbeef00`},
		{"timestamptz", pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+05:30"},
		{"timestamp", pgtype.TimestampOID, "2024-01-02 03:04:05"},
		{"int array", pgtype.Int4ArrayOID, "[0:2]={1,NULL,3}"},
		{"escaped text array", pgtype.TextArrayOID, `{"a\"b","c\\d",e}`},
		{"bytea array", pgtype.ByteaArrayOID, `{"\\x0a0b"}`},
		{"malformed array", pgtype.Int4ArrayOID, "{1,2"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			enc := EncoderFor(tc.oid)
			d := Datum{Kind: Text, Text: []byte(tc.in)}
			dst := make([]byte, 0, 1024)
			allocs := testing.AllocsPerRun(100, func() {
				dst = AppendJSON(dst[:0], enc, d)
			})
			if allocs != 0 {
				t.Fatalf("AppendJSON(%d, %q) allocates %v times, want 0", tc.oid, tc.in, allocs)
			}
		})
	}
}

func TestEncoderForUnknownIsString(t *testing.T) {
	for _, oid := range []uint32{0, 16384, 4294967295, pgtype.XIDOID, pgtype.PointOID} {
		t.Run(fmt.Sprint(oid), func(t *testing.T) {
			got := EncoderFor(oid)(nil, []byte("42"))
			if string(got) != `"42"` {
				t.Fatalf("AppendJSON(%d, %q) = %s, want %s", oid, "42", got, `"42"`)
			}
		})
	}
}

func BenchmarkAppendJSON(b *testing.B) {
	cases := []struct {
		name string
		oid  uint32
		in   string
	}{
		{"int", pgtype.Int4OID, "1234567"},
		{"text", pgtype.TextOID, "The quick brown fox jumps over the lazy dog, \"twice\"."},
		{"timestamptz", pgtype.TimestamptzOID, "2024-01-02 03:04:05.123456+00"},
		{"numeric", pgtype.NumericOID, "123456789.987654321"},
		{"int array", pgtype.Int4ArrayOID, "{1,2,3,4,5,6,7,8,9,10}"},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			enc := EncoderFor(bc.oid)
			d := Datum{Kind: Text, Text: []byte(bc.in)}
			var dst []byte
			b.ReportAllocs()
			b.SetBytes(int64(len(bc.in)))
			for b.Loop() {
				dst = AppendJSON(dst[:0], enc, d)
			}
		})
	}
}

// fuzzOIDs is every OID with its own encoder plus one that has none.
var fuzzOIDs = func() []uint32 {
	oids := []uint32{16384}
	for oid := range encoders {
		oids = append(oids, oid)
	}
	slices.Sort(oids)
	return oids
}()

func isRawJSON(oid uint32) bool {
	switch oid {
	case pgtype.JSONOID, pgtype.JSONBOID, pgtype.JSONArrayOID, pgtype.JSONBArrayOID:
		return true
	}
	return false
}

// FuzzEncode runs every encoder on arbitrary text. Beyond not panicking, each
// output must be valid JSON (json and jsonb excepted: they embed their input
// by design), must not depend on dst's contents or modify the input, and must
// be either the input as a JSON string or the shape the type converts to.
func FuzzEncode(f *testing.F) {
	for _, tc := range encodeCases {
		f.Add([]byte(tc.in))
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		fallback := AppendString(nil, text)
		var fallbackS string
		if err := json.Unmarshal(fallback, &fallbackS); err != nil {
			t.Fatalf("AppendString(%q) = %s, invalid: %v", text, fallback, err)
		}
		want, _ := json.Marshal(string(text))
		var wantS string
		if err := json.Unmarshal(want, &wantS); err != nil {
			t.Fatal(err)
		}
		if fallbackS != wantS {
			t.Fatalf("AppendString(%q) = %s, want %s", text, fallback, want)
		}

		orig := bytes.Clone(text)
		for _, oid := range fuzzOIDs {
			enc := EncoderFor(oid)
			got := enc(nil, text)
			if !bytes.Equal(text, orig) {
				t.Fatalf("AppendJSON(%d, %q) modified its input", oid, orig)
			}
			dst := append(make([]byte, 0, 8+len(text)*2), "prefix"...)
			for i := len(dst); i < cap(dst); i++ {
				dst[:cap(dst)][i] = '"'
			}
			got2 := enc(dst, text)
			if string(got2) != "prefix"+string(got) {
				t.Fatalf("AppendJSON(%d, %q) = %s with a prefix, %s without", oid, text, got2, got)
			}
			if isRawJSON(oid) {
				if oid == pgtype.JSONOID || oid == pgtype.JSONBOID {
					if !bytes.Equal(got, text) {
						t.Fatalf("AppendJSON(%d, %q) = %s, want the input", oid, text, got)
					}
				}
				continue
			}
			if !json.Valid(got) {
				t.Fatalf("AppendJSON(%d, %q) = %s, not valid JSON", oid, text, got)
			}
			if oid == pgtype.ByteaOID {
				// encoding/hex and encoding/base64 are the oracle.
				want := fallback
				if b, err := hex.DecodeString(strings.TrimPrefix(string(text), `\x`)); err == nil && bytes.HasPrefix(text, []byte(`\x`)) {
					want = []byte(`"` + base64.StdEncoding.EncodeToString(b) + `"`)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("AppendJSON(%d, %q) = %s, want %s", oid, text, got, want)
				}
				continue
			}
			if bytes.Equal(got, fallback) {
				continue
			}
			if shape := fuzzShape(oid); shape == nil || !shape.Match(got) || (isExact(oid) && !bytes.Equal(got, text)) {
				t.Fatalf("AppendJSON(%d, %q) = %s, want the input as a string or a match for %v", oid, text, got, shape)
			}
		}
	})
}

var (
	numberRE      = regexp.MustCompile(`^-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?$`)
	boolRE        = regexp.MustCompile(`^(true|false)$`)
	timestampRE   = regexp.MustCompile(`^"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"$`)
	timestamptzRE = regexp.MustCompile(`^"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})"$`)
	arrayRE       = regexp.MustCompile(`^\[(?s:.*)\]$`)
)

// fuzzShape is what oid's encoder may produce other than the input as a JSON
// string; nil means nothing else.
func fuzzShape(oid uint32) *regexp.Regexp {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.NumericOID,
		pgtype.Float4OID, pgtype.Float8OID:
		return numberRE
	case pgtype.BoolOID:
		return boolRE
	case pgtype.TimestampOID:
		return timestampRE
	case pgtype.TimestamptzOID:
		return timestamptzRE
	}
	if _, ok := encoders[oid]; ok {
		return arrayRE
	}
	return nil
}

// isExact reports whether oid's encoder may emit a number only by copying the
// input: integers and numeric must never be reformatted.
func isExact(oid uint32) bool {
	switch oid {
	case pgtype.Int2OID, pgtype.Int4OID, pgtype.Int8OID, pgtype.OIDOID, pgtype.NumericOID:
		return true
	}
	return false
}
