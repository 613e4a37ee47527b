package deliver

import "testing"

func TestUUIDBytes(t *testing.T) {
	u, ok := uuidBytes("00112233-4455-6677-8899-AaBbCcDdEeFf")
	want := [16]byte{0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff}
	if !ok || u != want {
		t.Fatalf("uuidBytes = %x, %v; want %x", u, ok, want)
	}
	for _, bad := range []string{"", "00112233445566778899aabbccddeeff", "00112233-4455-6677-8899-aabbccddeefg",
		"0011223-34455-6677-8899-aabbccddeeff", "00112233-4455-6677-8899-aabbccddeeff0"} {
		if _, ok := uuidBytes(bad); ok {
			t.Errorf("uuidBytes(%q) accepted", bad)
		}
	}
}
