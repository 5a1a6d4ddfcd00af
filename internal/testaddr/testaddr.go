// Package testaddr picks free loopback addresses for tests that start
// servers (nodes, bookies) on fixed addresses, possibly restarting them on
// the same address.
package testaddr

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// Loopback returns n distinct 127.0.0.1 addresses whose ports are free
// right now and lie below the kernel's ephemeral port range. A port from
// that range (what listening on port 0 hands out) can become the local
// port of any process's outgoing connection as soon as it is released, and
// stay taken for that connection's life: a server restarted on its address
// then fails with "address already in use" (a bookie restart in the fault
// tests did). Below the range only a listener that asks for the port can
// take it.
func Loopback(t testing.TB, n int) []string {
	t.Helper()
	low := ephemeralLow()
	seen := map[int]bool{}
	var out []string
	for tries := 0; len(out) < n; tries++ {
		if tries == 100*n {
			t.Fatalf("testaddr: no %d free ports in [%d, %d) after %d tries", n, minPort, low, tries)
		}
		port := minPort + rand.IntN(low-minPort)
		if seen[port] {
			continue
		}
		l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			continue // taken
		}
		l.Close()
		seen[port] = true
		out = append(out, l.Addr().String())
	}
	return out
}

// minPort is the lowest port Loopback picks: well above the well-known
// and common service ports.
const minPort = 10000

// ephemeralLow is the first port of the kernel's ephemeral range
// (/proc/sys/net/ipv4/ip_local_port_range on Linux), 32768 where it
// cannot be read.
func ephemeralLow() int {
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil && n > minPort+2000 {
				low = n
			}
		}
	}
	return low
}
