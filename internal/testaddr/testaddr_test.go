package testaddr

import (
	"net"
	"strconv"
	"testing"
)

// The addresses are distinct loopback addresses with ports below the
// ephemeral range that can be listened on.
func TestLoopback(t *testing.T) {
	addrs := Loopback(t, 20)
	seen := map[string]bool{}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host != "127.0.0.1" {
			t.Fatalf("%q: host %q, err %v", a, host, err)
		}
		p, _ := strconv.Atoi(port)
		if p < minPort || p >= ephemeralLow() || seen[a] {
			t.Fatalf("%q: port outside [%d, %d) or repeated", a, minPort, ephemeralLow())
		}
		seen[a] = true
		l, err := net.Listen("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
}
