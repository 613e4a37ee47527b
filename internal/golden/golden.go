// Package golden compares test output with files under testdata/golden,
// rewriting them instead when a test runs with -update, so that a changed
// output is reviewed as a diff. Only test code imports it.
package golden

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// CheckJSON indents got and compares it with the file at path, which it
// writes first when update is set. A difference fails the test.
func CheckJSON(tb testing.TB, path string, got []byte, update bool) {
	tb.Helper()
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, got, "", "  "); err != nil {
		tb.Fatalf("indent %s: %v", got, err)
	}
	pretty.WriteByte('\n')
	if update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(path, pretty.Bytes(), 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		tb.Fatalf("read golden %s (run with -update to create it): %v", path, err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		tb.Fatalf("%s differs from golden:\n got: %s\nwant: %s", filepath.Base(path), pretty.Bytes(), want)
	}
}
