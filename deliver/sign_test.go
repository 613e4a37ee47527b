package deliver

import "testing"

func TestSign(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		secret    string
		id        string
		timestamp int64
		body      string
		want      string
	}{
		{
			// The published Standard Webhooks test vector.
			name:      "standard webhooks vector",
			secret:    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
			id:        "msg_p5jXN8AQM9LWM0D4loKWxJek",
			timestamp: 1614265330,
			body:      `{"test": 2432232314}`,
			want:      "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key, err := SecretKey(tc.secret)
			if err != nil {
				t.Fatalf("SecretKey(%q) error = %v", tc.secret, err)
			}
			if got := Sign(key, tc.id, tc.timestamp, []byte(tc.body)); got != tc.want {
				t.Fatalf("Sign() = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestSecretKeyRefuses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		secret string
	}{
		{"no prefix", "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
		{"not base64", "whsec_!!!"},
		{"empty", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := SecretKey(tc.secret); err != ErrBadSecret {
				t.Fatalf("SecretKey(%q) error = %v, want %v", tc.secret, err, ErrBadSecret)
			}
		})
	}
}
