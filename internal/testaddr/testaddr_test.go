package testaddr

import (
	"net"
	"strconv"
	"testing"
)

// The addresses are distinct addresses on the host asked for, with ports
// below the ephemeral range that can be listened on there.
func TestFree(t *testing.T) {
	for _, c := range []struct {
		name, host string
		addrs      func(t testing.TB, n int) []string
	}{
		{"Loopback", "127.0.0.1", Loopback},
		{"Free 127.0.0.1", "127.0.0.1", func(t testing.TB, n int) []string { return Free(t, "127.0.0.1", n) }},
		{"Free 0.0.0.0", "0.0.0.0", func(t testing.TB, n int) []string { return Free(t, "0.0.0.0", n) }},
		{"Ports 0.0.0.0", "0.0.0.0", func(t testing.TB, n int) []string {
			var as []string
			for _, p := range Ports(t, "0.0.0.0", n) {
				as = append(as, net.JoinHostPort("0.0.0.0", p))
			}
			return as
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			addrs := c.addrs(t, 20)
			if len(addrs) != 20 {
				t.Fatalf("%d addresses, want 20", len(addrs))
			}
			seen := map[string]bool{}
			for _, a := range addrs {
				host, port, err := net.SplitHostPort(a)
				if err != nil || host != c.host {
					t.Fatalf("%q: host %q, want %q, err %v", a, host, c.host, err)
				}
				p, _ := strconv.Atoi(port)
				if p < minPort || p >= ephemeralLow() || seen[port] {
					t.Fatalf("%q: port outside [%d, %d) or repeated", a, minPort, ephemeralLow())
				}
				seen[port] = true
				l, err := net.Listen("tcp", a)
				if err != nil {
					t.Fatal(err)
				}
				l.Close()
			}
		})
	}
}
