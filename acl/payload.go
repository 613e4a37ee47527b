package acl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

var jsonValueType = reflect.TypeFor[*structpb.Value]()

// HasPayload reports whether table has a payload expression.
func (r *Rules) HasPayload(table string) bool {
	t := r.tables[table]
	return t != nil && t.payload != nil
}

// Payload evaluates table's payload expression for in and returns the JSON
// object it builds, converted by CEL's JSON rules (timestamps as RFC 3339
// strings, integers beyond ±2^53 as strings, numeric columns are doubles).
// It returns nil and no error when the table has no payload expression.
func (r *Rules) Payload(table string, in *Input) ([]byte, error) {
	t := r.tables[table]
	if t == nil || t.payload == nil {
		return nil, nil
	}
	a, err := bind(t.payload, in)
	if err != nil {
		return nil, err
	}
	out, _, err := t.payload.prg.Eval(a)
	release(a)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.payload.field, err)
	}
	v, err := out.ConvertToNative(jsonValueType)
	if err != nil {
		return nil, fmt.Errorf("%s: convert to JSON: %w", t.payload.field, err)
	}
	sv := v.(*structpb.Value)
	if sv.GetStructValue() == nil {
		return nil, fmt.Errorf("%s: gave %s, not an object", t.payload.field, out.Type())
	}
	b, err := protojson.Marshal(sv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.payload.field, err)
	}
	// protojson varies its spacing on purpose; bodies should not.
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, fmt.Errorf("%s: %w", t.payload.field, err)
	}
	return buf.Bytes(), nil
}
